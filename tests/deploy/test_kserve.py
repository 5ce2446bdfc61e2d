"""deploy/kserve/inferenceservice.yaml runs this image as a v2 predictor: checked against the
Dockerfile and the app's own routes, since no cluster runs in CI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from service.config import Settings
from service.main import PUBLIC_PATHS, create_app

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = list(yaml.safe_load_all((ROOT / "deploy/kserve/inferenceservice.yaml").read_text()))
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _document(kind: str) -> dict:
    (found,) = [d for d in DOCUMENTS if d["kind"] == kind]
    return found


def _dockerfile(instruction: str) -> str:
    (line,) = re.findall(rf"^{instruction}\s+(.+)$", DOCKERFILE, re.MULTILINE)
    return line.strip()


def _get_routes() -> set[str]:
    app = create_app(Settings(model_dir=ROOT / "no-such-store", _env_file=None))
    return {path for path, operations in app.openapi()["paths"].items() if "get" in operations}


def test_inference_service_is_a_v2_predictor_on_the_runtime():
    service = _document("InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    model = service["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2"
    runtime = _document("ServingRuntime")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert model["runtime"] == runtime["metadata"]["name"]
    assert "v2" in runtime["spec"]["protocolVersions"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}


def test_container_matches_the_dockerfile():
    (container,) = _document("ServingRuntime")["spec"]["containers"]
    assert container["name"] == "kserve-container"  # the name KServe looks for
    assert container["command"] == json.loads(_dockerfile("CMD"))
    (port,) = container["ports"]
    assert str(port["containerPort"]) == _dockerfile("EXPOSE")
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["PORT"] == str(port["containerPort"]) and env["HOST"] == "0.0.0.0"
    assert f"MODEL_DIR={env['MODEL_DIR']}" in DOCKERFILE  # the store baked into the image


def test_probes_are_real_open_routes_on_the_container_port():
    (container,) = _document("ServingRuntime")["spec"]["containers"]
    port = container["ports"][0]["containerPort"]
    routes = _get_routes()
    for probe in ("readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] in routes, check["path"]
        assert check["path"].startswith("/v2/health/")
        assert check["path"] in PUBLIC_PATHS  # answers without X-API-Key
        assert check["port"] == port
