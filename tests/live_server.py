"""A real `python -m service` on a free 127.0.0.1 port, for tests where the network path,
signals or process memory are under test."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident memory of a live process (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass(frozen=True)
class Payload:
    path: str
    content: bytes
    headers: dict[str, str]
    images: int


def encoded(path: str, images: int, **kwargs) -> Payload:
    """A POST encoded once (multipart bodies included), so clients spend their CPU sending it."""
    request = httpx.Request("POST", f"http://127.0.0.1{path}", **kwargs)
    content = request.read()
    return Payload(path, content, {"content-type": request.headers["content-type"]}, images)


def request_statuses(url: str, route: str = "") -> Counter[str]:
    """Requests a live server has answered, by status, from its /metrics (routes containing `route`)."""
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name == "http_requests_total" and route in sample.labels.get("route", ""):
                counts[sample.labels["status"]] += int(sample.value)
    return counts


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


SERVER_ENV = {
    "RELOAD_INTERVAL_SECONDS": "0",
    "TF_INTRA_OP_THREADS": "1",
    "TF_INTER_OP_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "LOG_LEVEL": "warning",
    # These servers test HTTP behaviour, not runtimes: the test models carry no exports, so `auto`
    # would export each to ONNX and OpenVINO at load (seconds per model). The load test and the
    # isolation figure ask for `auto` on the shipped digits, which carries its exports.
    "INFERENCE_RUNTIME": "tensorflow",
    # one process unless a test asks for more (tests/service/test_workers.py): the pid is the server's
    "WORKERS": "1",
}


@contextlib.contextmanager
def serve(store: Path, log_path: Path, ready: bool = True, timeout: float = 120, **env: str) -> Iterator[Server]:
    """`python -m service` on a free 127.0.0.1 port over `store`, until the block ends.

    Waits for /health/ready == 200 (`ready`), or only for /health/live. Killed on the way out
    if still running.
    """
    inherited = {key: value for key, value in os.environ.items() if key != "API_KEY"}
    # a runtime cache of its own beside the log: nothing shared between tests or left in /tmp
    own = {"MODEL_DIR": str(store), "RUNTIME_CACHE_DIR": str(log_path.parent / f"{log_path.stem}-runtime-cache")}
    environment = inherited | SERVER_ENV | own | env

    def start() -> Server:
        port = free_port()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                cwd=REPO,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a group of its own: its worker processes are killed with it
            )
        return Server(f"http://127.0.0.1:{port}", port, process, log_path)

    server = start()
    process = server.process
    try:
        deadline = time.monotonic() + timeout
        path = "/health/ready" if ready else "/health/live"
        retries = 2
        while True:
            if process.poll() is not None:
                # uvicorn binds after the lifespan's start, seconds after `free_port` chose the
                # port: a connection from another test (xdist) may have taken it meanwhile.
                if retries and "address already in use" in server.log_tail():
                    retries -= 1
                    server = start()
                    process = server.process
                    continue
                pytest.fail(f"server exited with {process.returncode}:\n{server.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(server.url + path, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"server not answering {path} within {timeout}s:\n{server.log_tail()}")
            time.sleep(0.1)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the server and any worker processes left
        process.wait(10)
