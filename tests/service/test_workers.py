"""Two worker processes (`WORKERS=2`) answer as one server (issue 12: the default worker count).

Each worker loads every model and keeps its own event loop; what a client can carry from one
request to the next must not depend on which worker accepts its connection:

- a prediction id made by one worker is found by the other (`GET /activations/{id}`);
- a `/metrics` scrape, whichever worker answers it, counts every worker's requests;
- SIGTERM stops both workers and the server exits 0, leaving nothing behind in /tmp;
- a worker takes connections only once its models have loaded or failed (in process).

Which worker holds a connection is read from the kernel (psutil: each worker's established
sockets), so the test knows that it crossed workers rather than hoping it did.
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.live_server import Server, request_statuses, serve
from tests.service.conftest import ModelFactory, grey_image, settings_for


def _workers(server: Server) -> list[psutil.Process]:
    """The server's worker processes (multiprocessing's resource tracker is a child too)."""
    children = psutil.Process(server.process.pid).children()
    return [child for child in children if "spawn_main" in " ".join(child.cmdline())]


def _local_port(response: httpx.Response) -> int:
    """The client's port of the connection a response came on."""
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def _workers_by_client_port(server: Server) -> dict[int, int]:
    """Each established connection's client port, mapped to the worker holding it (from the kernel)."""
    return {
        c.raddr.port: worker.pid
        for worker in _workers(server)
        for c in worker.connections("tcp")
        if c.raddr and c.laddr.port == server.port and c.status == psutil.CONN_ESTABLISHED
    }


def _clients_on_each_worker(server: Server, rounds: int = 10, at_once: int = 16) -> dict[int, httpx.Client]:
    """One kept-alive client per worker, by worker pid.

    An idle server's workers do not take turns: the kernel hands a run of new connections to
    the same waiting worker. Connections opened while the workers are busy spread, so each
    round opens `at_once` connections concurrently, each sending a prediction.
    """
    found: dict[int, httpx.Client] = {}
    body = {"file": ("g.png", grey_image(128))}
    with ThreadPoolExecutor(at_once) as pool:
        for _ in range(rounds):
            clients = [
                httpx.Client(base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=1))
                for _ in range(at_once)
            ]
            responses = list(pool.map(lambda client: client.post("/models/grey/predict", files=body), clients))
            holders = _workers_by_client_port(server)
            for client, response in zip(clients, responses, strict=True):
                assert response.status_code == 200, response.text
                worker = holders[_local_port(response)]
                if worker in found:
                    client.close()
                else:
                    found[worker] = client
            if len(found) == 2:
                break
    return found


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, models: ModelFactory):
    root = tmp_path_factory.mktemp("workers")
    models.write(root / "models", "grey", 1)
    with serve(root / "models", root / "server.log", WORKERS="2") as server:
        yield server


def test_two_workers_start_and_each_serves(two_workers: Server):
    assert len(_workers(two_workers)) == 2
    clients = _clients_on_each_worker(two_workers)
    try:
        assert len(clients) == 2, "40 new connections all went to one worker"
    finally:
        for client in clients.values():
            client.close()


def test_a_prediction_id_from_one_worker_is_found_by_the_other(two_workers: Server):
    clients = _clients_on_each_worker(two_workers)
    try:
        assert len(clients) == 2
        one, other = clients.values()
        for maker, finder, grey in ((one, other, 230), (other, one, 20)):
            made = maker.post("/models/grey/predict", files={"file": ("g.png", grey_image(grey))})
            assert made.status_code == 200, made.text
            prediction = made.json()["predictions"][0]
            found = finder.get(
                f"/activations/{prediction['id']}", params={"layers": "probabilities", "encoding": "list"}
            )
            assert found.status_code == 200, found.text
            (layer,) = found.json()["layers"]
            predicted = [prediction["probabilities"][label] for label in ("dark", "bright")]
            assert np.allclose(np.asarray(layer["data"]).ravel(), predicted, atol=1e-6)
    finally:
        for client in clients.values():
            client.close()


def test_metrics_count_every_workers_requests(two_workers: Server):
    clients = _clients_on_each_worker(two_workers)
    before = request_statuses(two_workers.url, "/models/{name}/predict")["200"]
    try:
        assert len(clients) == 2
        for client in clients.values():
            for _ in range(5):
                assert client.post("/models/grey/predict", files={"file": ("g.png", grey_image(9))}).status_code == 200
    finally:
        for client in clients.values():
            client.close()
    for _ in range(4):  # each scrape may land on either worker: every one must see all ten
        assert request_statuses(two_workers.url, "/models/{name}/predict")["200"] - before == 10


def test_with_several_workers_each_takes_connections_only_once_it_can_serve(store: Path, models: ModelFactory):
    """In process: the lifespan of a worker (WORKERS > 1) returns once each model's newest version
    has loaded or failed, so the first request finds it ready; a broken version does not hold it."""
    models.write(store, "broken", 1, kind="grey", sha="0" * 64)  # its card's sha256 does not match: it fails
    with TestClient(create_app(settings_for(store, workers=2))) as client:
        states = {m["name"]: m["versions"][0]["state"] for m in client.get("/models").json()["models"]}
        assert states == {"grey": "ready", "colors": "ready", "broken": "failed"}, states
        assert client.post("/models/grey/predict", files={"file": ("g.png", grey_image(200))}).status_code == 200


def test_sigterm_stops_both_workers_and_leaves_nothing_behind(tmp_path: Path, models: ModelFactory):
    models.write(tmp_path / "models", "grey", 1)
    with serve(tmp_path / "models", tmp_path / "server.log", WORKERS="2") as server:
        workers = psutil.Process(server.process.pid).children()  # the resource tracker too
        shared = {Path(w.environ()["INPUT_CACHE_PATH"]).parent for w in _workers(server)}
        assert len(shared) == 1 and len(_workers(server)) == 2, shared
        (folder,) = shared
        assert (folder / "inputs.sqlite").is_file() and any((folder / "metrics").iterdir())
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0, server.log_tail()
        still_running = psutil.wait_procs(workers, timeout=10)[1]
        assert still_running == [], f"workers still running after the server exited: {still_running}"
        assert not folder.exists(), f"{folder} left behind"
        assert "Traceback" not in server.log_tail(50_000)
