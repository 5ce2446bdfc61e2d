"""Faults: a broken store, a hot swap under load, SIGTERM with requests in flight, queue overflow.

Each of these is about what a client sees while something goes wrong, so apart from the
broken store (which only needs the lifespan) they run against `python -m service` on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from modelcard import CARD_FILE, MODEL_FILE, ModelCard, file_sha256
from service.main import create_app
from tests.live_server import serve
from tests.reliability.conftest import assert_no_leak
from tests.service.conftest import grey_image, settings_for, wait_until

# ---------------------------------------------------------------------------------- broken store


def corrupt_model_file(folder: Path) -> None:
    """Cut the Keras file in half and give the card the sha256 of what is left: only Keras can tell."""
    model = folder / MODEL_FILE
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    card = ModelCard.model_validate_json((folder / CARD_FILE).read_text())
    (folder / CARD_FILE).write_text(card.model_copy(update={"sha256": file_sha256(model)}).model_dump_json())


def tamper_model_file(folder: Path) -> None:
    """Flip one byte inside the Keras file after its card was written."""
    model = folder / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))


def test_a_broken_store_reports_each_failure_and_serves_the_rest(models, tmp_path):
    root = tmp_path / "models"
    models.write(root, "grey", 1)
    corrupt_model_file(models.write(root, "corrupt", 1, kind="grey"))
    tamper_model_file(models.write(root, "tampered", 1, kind="colors"))
    with TestClient(create_app(settings_for(root))) as client:
        wait_until(lambda: all(m["state"] != "loading" for m in client.get("/models").json()["models"]))
        responses = [client.get("/health/live")]
        assert responses[-1].status_code == 200

        responses.append(ready := client.get("/health/ready"))
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "not_ready"
        states = {name: model["versions"][0] for name, model in body["models"].items()}
        assert states["grey"] == {"version": 1, "state": "ready", "reason": None, "keras_loaded": True}
        assert states["corrupt"]["state"] == "failed"
        assert states["corrupt"]["reason"] and "sha256" not in states["corrupt"]["reason"]
        assert states["tampered"]["state"] == "failed"
        assert "sha256 mismatch" in states["tampered"]["reason"]

        responses.append(served := client.post("/models/grey/predict", files={"file": ("a.png", grey_image(255))}))
        assert served.status_code == 200 and served.json()["predictions"][0]["label"] == "bright"
        for name in ("corrupt", "tampered"):
            responses.append(refused := client.post(f"/models/{name}/predict", files={"file": ("a.png", b"x")}))
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_not_ready"
            responses.append(client.get(f"/models/{name}"))
            assert responses[-1].status_code == 503
        responses.append(listed := client.get("/models"))
        assert {m["name"]: m["state"] for m in listed.json()["models"]} == {
            "corrupt": "failed",
            "grey": "ready",
            "tampered": "failed",
        }
        responses.append(metrics := client.get("/metrics"))
        assert 'model_state{model="corrupt",state="failed",version="1"} 1.0' in metrics.text
        for response in responses:
            assert_no_leak(response.text, root, tmp_path)


# ---------------------------------------------------------------------------------- hot swap


@pytest.mark.slow
def test_a_new_version_takes_over_under_load_exactly_once(models, tmp_path):
    root = tmp_path / "models"
    models.write(root, "grey", 1)
    clients, after_switch, per_client_limit, time_limit = 16, 20, 3000, 90.0
    with serve(root, tmp_path / "server.log", RELOAD_INTERVAL_SECONDS="0.2") as server:
        logs: list[list[int]] = [[] for _ in range(clients)]
        failures: list[str] = []
        swapped = asyncio.Event()

        async def client(log: list[int], number: int) -> None:
            deadline = time.monotonic() + time_limit
            images = {"bright": grey_image(250), "dark": grey_image(5)}
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                for i in range(per_client_limit):
                    if time.monotonic() > deadline:
                        return
                    if swapped.is_set() and log.count(2) >= after_switch:
                        return
                    label = "bright" if (i + number) % 2 else "dark"
                    response = await http.post("/models/grey/predict", files={"file": ("g.png", images[label])})
                    if response.status_code != 200 or response.json()["predictions"][0]["label"] != label:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                        continue
                    log.append(response.json()["version"])

        async def swap() -> None:
            deadline = time.monotonic() + 30
            while min(len(log) for log in logs) < 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.to_thread(models.write, root, "grey", 2)  # written aside, renamed into place
            swapped.set()

        async def main() -> None:
            await asyncio.gather(swap(), *(client(log, n) for n, log in enumerate(logs)))

        asyncio.run(main())
        described = httpx.get(f"{server.url}/models/grey").json()
        log_text = server.log_tail(20_000)

    assert failures == [], failures[:5]
    for log in logs:
        changes = sum(1 for before, after in zip(log, log[1:], strict=False) if before != after)
        assert log[0] == 1 and log[-1] == 2 and changes == 1, f"versions seen by one client: {log}"
    assert described["version"] == 2
    assert [(v["version"], v["state"]) for v in described["versions"]] == [(1, "ready"), (2, "ready")]
    assert "Traceback" not in log_text


# ---------------------------------------------------------------------------------- a slow model

QUEUE_SIZE = 4  # images waiting per model version; one more is in the model
RETRY_AFTER = 2
GRACE_SECONDS = 10


@pytest.fixture(scope="module")
def slow_server(models, tmp_path_factory):
    """A server with `grey` and `slow` (about 0.1 s per image, one image per model call)."""
    root = tmp_path_factory.mktemp("slow-store")
    models.write(root, "grey", 1)
    models.write(root, "slow", 1)
    env = {
        "MAX_QUEUE_SIZE": str(QUEUE_SIZE),
        "MAX_BATCH_SIZE": "1",
        "RETRY_AFTER_SECONDS": str(RETRY_AFTER),
        "GRACEFUL_SHUTDOWN_SECONDS": str(GRACE_SECONDS),
        "WARM_ACTIVATION_PROBES": "false",
        "LOG_LEVEL": "info",
    }
    with serve(root, root.parent / "slow-server.log", **env) as server:
        yield server


def queue_depth(url: str, model: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    match = re.search(rf'^queue_depth{{model="{model}",version="1"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.slow
@pytest.mark.exclusive
def test_queue_overflow_is_503_with_retry_after_at_once_and_the_server_recovers(slow_server):
    url, burst = slow_server.url, 32

    async def one(http: httpx.AsyncClient) -> tuple[int, float, httpx.Response]:
        started = time.perf_counter()
        response = await http.post("/models/slow/predict", files={"file": ("s.png", grey_image(200))})
        return response.status_code, time.perf_counter() - started, response

    async def main() -> list[tuple[int, float, httpx.Response]]:
        limits = httpx.Limits(max_connections=burst)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
            # one bound for the whole burst: an answer may be slow, but nothing may hang
            return await asyncio.wait_for(asyncio.gather(*(one(http) for _ in range(burst))), timeout=60)

    results = asyncio.run(main())
    statuses = sorted(status for status, _, _ in results)
    assert set(statuses) == {200, 503}, statuses
    accepted = statuses.count(200)
    assert QUEUE_SIZE <= accepted < burst, statuses  # at least a queue's worth, never all of them
    for status, seconds, response in results:
        assert_no_leak(response.text)
        if status == 503:
            assert response.headers["retry-after"] == str(RETRY_AFTER)
            assert response.json()["error"]["code"] == "queue_full"
            # refused on arrival, not after waiting for the model: well under the ~0.1 s x 5 of a full queue
            assert seconds < 2.0, f"a 503 took {seconds:.2f}s"

    # recovered: the queue drained, both models answer, and the server is ready
    assert queue_depth(url, "slow") == 0
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.post("/models/slow/predict", files={"file": ("s.png", grey_image(200))}).status_code == 200
        assert http.post("/models/grey/predict", files={"file": ("g.png", grey_image(200))}).status_code == 200
        assert http.get("/health/ready").status_code == 200


@pytest.mark.slow
@pytest.mark.exclusive
def test_sigterm_finishes_requests_in_flight_refuses_new_connections_and_exits_0(slow_server):
    url, process = slow_server.url, slow_server.process
    in_flight = QUEUE_SIZE  # all fit in the queue even before the first is taken from it

    async def main() -> tuple[list[httpx.Response], bool, float]:
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=10)) as http:
            requests = [
                asyncio.create_task(http.post("/models/slow/predict", files={"file": ("s.png", grey_image(200))}))
                for _ in range(in_flight)
            ]
            requests.append(
                asyncio.create_task(http.post("/models/grey/predict", files={"file": ("g.png", grey_image(9))}))
            )
            deadline = time.monotonic() + 10
            while await asyncio.to_thread(queue_depth, url, "slow") < 2:  # one in the model, two or more waiting
                assert time.monotonic() < deadline, "the slow requests never queued up"
                await asyncio.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            # new connections: refused once uvicorn has closed its socket (it checks every 0.1 s).
            # A connection that reached the server just before that (in the listen backlog, or
            # accepted with no request read yet) is closed without an answer, the same refusal one
            # step later (uvicorn's Server.shutdown and HttpToolsProtocol.shutdown): ReadError or
            # RemoteProtocolError. A connection that is answered is not refused: keep trying.
            refused_while_draining = False
            while time.monotonic() - signalled < 5:
                try:
                    async with httpx.AsyncClient(base_url=url, timeout=2) as fresh:
                        await fresh.get("/health/live")
                except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                    refused_while_draining = not all(task.done() for task in requests)
                    break
                await asyncio.sleep(0.01)
            else:
                pytest.fail("new connections were still accepted 5 s after SIGTERM")
            responses = await asyncio.wait_for(asyncio.gather(*requests), timeout=GRACE_SECONDS + 5)
            return responses, refused_while_draining, signalled

    responses, refused_while_draining, signalled = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * (in_flight + 1), [r.text[:200] for r in responses]
    assert [r.json()["predictions"][0]["label"] for r in responses][-1] == "dark"
    assert refused_while_draining, "the connection test must happen while requests are still being served"

    with contextlib.suppress(Exception):
        process.wait(GRACE_SECONDS + 5)
    exited_after = time.monotonic() - signalled
    assert process.returncode == 0, slow_server.log_tail()
    assert exited_after <= GRACE_SECONDS, f"exited {exited_after:.1f}s after SIGTERM"
    log = slow_server.log_tail(20_000)
    assert "Traceback" not in log
    assert "Application shutdown complete" in log
