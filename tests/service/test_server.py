"""`python -m service` as a real uvicorn process on 127.0.0.1: the network path and a clean stop."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from tests.live_server import serve
from tests.service.conftest import color_image, grey_image

REPO = Path(__file__).resolve().parents[2]
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    models.write(root, "grey", 1)
    models.write(root, "colors", 1)
    log = root.parent / "server.log"  # the SIGTERM test reads uvicorn's info lines
    with serve(root, log, MAX_BODY_BYTES=str(MAX_BODY), MAX_BATCH_SIZE="8", LOG_LEVEL="info") as live:
        yield live.url, live.process, live.log_path


def test_predicts_over_loopback(server):
    url, _, _ = server
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/health/live").json() == {"status": "alive"}
        files = [("file", ("a.png", color_image((0, 255, 0)))), ("file", ("b.png", color_image((255, 0, 0))))]
        response = client.post("/models/colors/predict", files=files)
        assert response.status_code == 200
        assert [p["label"] for p in response.json()["predictions"]] == ["green", "red"]
        response = client.post("/predict", params={"model": "grey"}, files={"file": ("c.png", grey_image(250))})
        assert response.json()["predictions"][0]["label"] == "bright"


def test_body_limit_holds_for_chunked_uploads_and_content_length(server):
    url, _, _ = server

    def chunks():
        for _ in range(10):
            yield b"\0" * (16 * 1024)  # 160 KiB, no Content-Length: the limit must count bytes as they come

    with httpx.Client(base_url=url, timeout=10) as client:
        response = client.post("/models/grey/predict", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        response = client.post("/models/grey/predict", files={"file": ("big.png", b"\0" * (MAX_BODY + 1))})
        assert response.status_code == 413
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/health/live").status_code == 200


def test_concurrent_clients_over_loopback(server):
    url, _, _ = server

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:

            async def one(i: int):
                value = 255 if i % 2 else 0
                response = await client.post("/models/grey/predict", files={"file": ("x.png", grey_image(value))})
                return response.status_code, response.json()["predictions"][0]["label"]

            return await asyncio.gather(*(one(i) for i in range(40)))

    answers = asyncio.run(main())
    assert answers == [(200, "bright" if i % 2 else "dark") for i in range(40)]
    metrics = httpx.get(f"{url}/metrics").text
    assert 'batch_size_count{model="grey",version="1"}' in metrics


def test_sigterm_stops_gracefully(server):
    _, process, log_path = server
    process.send_signal(signal.SIGTERM)
    # a clean drain after SIGTERM (docker stop) exits 0
    assert process.wait(30) == 0
    log = log_path.read_text()
    assert "Traceback" not in log
    assert "not applied" not in log, "TensorFlow thread settings must take effect before the first op"
    assert "Waiting for application shutdown" in log and "Application shutdown complete" in log
