"""One real service for the client tests: uvicorn on 127.0.0.1 over tiny models, in a
subprocess started once per session, plus image-writing helpers."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
DARK, BRIGHT = 30, 220


def png_bytes(value: int, size: tuple[int, int] = (8, 8), mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    pixels = np.full((size[1], size[0]) if mode == "L" else (size[1], size[0], 3), value, np.uint8)
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def write_images(folder: Path, values: list[int], prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, value in enumerate(values):
        path = folder / f"{prefix}{i:04d}.png"
        path.write_bytes(png_bytes(value))
        paths.append(path)
    return paths


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service.client", "score", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
    )


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("KERAS_SERVE_API_KEY", None)
    return env


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a ready service with models `grey` (dark/bright) and `colors` (red/green/blue)."""
    folder = tmp_path_factory.mktemp("client-server")
    log_path = folder / "server.log"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    with open(log_path, "w") as log:  # a file, not a pipe: a chatty server never blocks on it
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.client.tiny_server", str(folder / "models")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
    try:
        line = process.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"the test server did not start: {line!r} {log_path.read_text()[-3000:]}")
        url = f"http://127.0.0.1:{int(line)}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the test server never became ready: {log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
