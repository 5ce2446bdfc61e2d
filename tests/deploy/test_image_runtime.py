"""The image's runtime, rebuilt as far as possible without Docker.

A fresh virtualenv gets the project installed as the Dockerfile's builder stage installs it
(`pip install .`; here through uv, which resolves the same dependencies faster);
then the container's CMD (`python -m service`, configured by HOST/PORT/MODEL_DIR as the
image sets them) starts from outside the source tree, and the container's HEALTHCHECK
command (`python -m service.healthcheck`) must pass against it. SIGTERM must stop it
cleanly, as `docker stop` would.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.live_server import free_port
from tests.service.conftest import ModelFactory, grey_image

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _dockerfile_commands() -> tuple[list[str], list[str]]:
    text = (ROOT / "Dockerfile").read_text()
    cmd = eval(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    health = eval(re.search(r"^\s+CMD (\[.*\])$", text, re.M).group(1))
    return cmd, health


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory) -> Path:
    """A fresh virtualenv (no system site-packages) with `pip install .`'s result in it.

    uv resolves and installs the same dependencies from pyproject.toml as the Dockerfile's pip
    does, in about a tenth of pip's time (10 s from an empty cache on this machine, pip 47 s
    from a warm one), which is what keeps this test inside the suite's budget.
    """
    venv = tmp_path_factory.mktemp("image") / "venv"
    uv = [sys.executable, "-m", "uv", "--quiet"]
    subprocess.run([*uv, "venv", "--python", sys.executable, str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    result = subprocess.run(
        [*uv, "pip", "install", "--python", str(python), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return python


@pytest.mark.timeout(1200)  # its fixture installs the project into a fresh virtualenv (up to 900 s)
def test_container_command_serves_and_its_healthcheck_passes(venv_python: Path, tmp_path: Path):
    store = tmp_path / "models"
    ModelFactory(tmp_path / "saved").write(store, "grey", 1)
    cmd, health = _dockerfile_commands()
    assert cmd == ["python", "-m", "service"] and health == ["python", "-m", "service.healthcheck"]
    port = free_port()
    bin_dir = str(venv_python.parent)
    env = {  # what the image sets, and nothing from this test process's environment
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MODEL_DIR": str(store),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
        "HOME": str(tmp_path),
    }
    workdir = tmp_path / "app"  # outside the source tree: only the installed package can be imported
    workdir.mkdir()
    server = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            check = subprocess.run(health, cwd=workdir, env=env, capture_output=True, text=True)
            if check.returncode == 0:
                break
            assert server.poll() is None, server.stdout.read()[-3000:]
            assert time.monotonic() < deadline, check.stderr
            time.sleep(0.5)
        base = f"http://127.0.0.1:{port}"
        while httpx.get(f"{base}/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        response = httpx.post(f"{base}/models/grey/predict", files=[("file", ("a.png", grey_image(240)))])
        assert response.status_code == 200 and response.json()["predictions"][0]["label"] == "bright"
        module = subprocess.run(
            [cmd[0], "-c", "import service; print(service.__file__)"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert str(ROOT) not in module, "the venv must run the installed package, not the source tree"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert code == 0
    unhealthy = subprocess.run(health, cwd=workdir, env=env, capture_output=True, text=True)
    assert unhealthy.returncode == 1 and "unhealthy" in unhealthy.stderr
