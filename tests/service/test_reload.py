"""Hot reload: new versions load in the background and take over atomically; bad ones never do."""

from __future__ import annotations

import gc
import logging
import shutil
import threading
import weakref

from fastapi.testclient import TestClient

from modelcard import file_sha256
from service.main import create_app
from tests.service.conftest import grey_image, settings_for, wait_until


def test_new_version_takes_over_while_requests_run_and_a_bad_one_is_refused(models, tmp_path):
    models.write(tmp_path, "grey", 1)
    (tmp_path / "grey" / ".tmp-half-written").mkdir()  # a writer's scratch folder: never a version
    (tmp_path / "grey" / "notes").mkdir()
    settings = settings_for(tmp_path, reload_interval_seconds=0.1)
    with TestClient(create_app(settings)) as client:
        wait_until(lambda: client.get("/health/ready").status_code == 200)
        stop = threading.Event()
        seen: list[list[tuple[int, int]]] = [[], []]

        def hammer(log: list[tuple[int, int]]) -> None:
            while not stop.is_set():
                response = client.post("/models/grey/predict", files={"file": ("a.png", grey_image(255))})
                log.append((response.status_code, response.json().get("version", -1)))

        readiness: list[int] = []  # a load balancer's probe: a reload must never take the replica out

        def probe() -> None:
            while not stop.is_set():
                readiness.append(client.get("/health/ready").status_code)

        threads = [threading.Thread(target=hammer, args=(log,)) for log in seen]
        threads.append(threading.Thread(target=probe))
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: all(len(log) > 5 for log in seen), timeout=20)
            models.write(tmp_path, "grey", 2)
            wait_until(lambda: all(log[-1][1] == 2 for log in seen), timeout=20)
            count = [len(log) for log in seen]
            wait_until(lambda: all(len(log) > n + 5 for log, n in zip(seen, count, strict=True)), timeout=20)

            # a version whose file does not match its card: reported, never served
            models.write(tmp_path, "grey", 3, sha="f" * 64)
            grey_versions = lambda: client.get("/models").json()["models"][0]["versions"]  # noqa: E731
            wait_until(lambda: [v["state"] for v in grey_versions()] == ["ready", "ready", "failed"], timeout=20)
            count = [len(log) for log in seen]
            wait_until(lambda: all(len(log) > n + 5 for log, n in zip(seen, count, strict=True)), timeout=20)
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)

        assert len(readiness) > 10 and set(readiness) == {200}, readiness
        for log in seen:
            assert {status for status, _ in log} == {200}, "no request may fail during a reload"
            versions = [version for _, version in log]
            assert versions[0] == 1 and versions[-1] == 2
            switch = versions.index(2)
            assert set(versions[switch:]) == {2}, "once version 2 serves, it stays the default"

        grey = client.get("/health/ready").json()["models"]["grey"]
        assert grey["default_version"] == 2
        states = {v["version"]: (v["state"], v["reason"]) for v in grey["versions"]}
        assert set(states) == {1, 2, 3}
        assert states[2] == ("ready", None)
        assert states[3][0] == "failed" and "sha256 mismatch" in states[3][1]
        assert client.get("/health/live").status_code == 200

        # a version folder that disappears is unloaded; the others keep serving
        shutil.rmtree(tmp_path / "grey" / "1")
        wait_until(lambda: [v["version"] for v in client.get("/models").json()["models"][0]["versions"]] == [2, 3])


def test_a_model_file_keras_cannot_load_is_reported_without_paths(models, tmp_path):
    folder = models.write(tmp_path, "grey", 1)
    (folder / "model.keras").write_bytes(b"this is not a zip file")
    card = (folder / "model.json").read_text()
    old_sha = card.split('"sha256": "')[1][:64]
    (folder / "model.json").write_text(card.replace(old_sha, file_sha256(folder / "model.keras")))
    models.write(tmp_path, "colors", 1)
    with TestClient(create_app(settings_for(tmp_path))) as client:
        wait_until(lambda: client.get("/models").json()["models"][0]["state"] != "loading")
        wait_until(lambda: client.get("/models").json()["models"][1]["state"] != "loading")
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        reason = ready.json()["models"]["grey"]["versions"][0]["reason"]
        assert reason and str(tmp_path) not in reason
        response = client.post("/models/colors/predict", files={"file": ("a.png", grey_image(0))})
        assert response.status_code == 200


def test_ready_once_each_models_newest_version_is_loaded_older_ones_load_after(models, tmp_path, monkeypatch):
    import service.registry

    release = threading.Event()
    order: list[str] = []
    real_load = service.registry.load_verified_model

    def recording_load(path, sha256):
        order.append(f"{path.parent.parent.name}/{path.parent.name}")
        if path.parent.name == "1":
            release.wait(20)  # the old versions hold their load until the test lets them go
        return real_load(path, sha256)

    monkeypatch.setattr(service.registry, "load_verified_model", recording_load)
    for name in ("grey", "colors"):
        models.write(tmp_path, name, 1)
        models.write(tmp_path, name, 2)
    try:
        with TestClient(create_app(settings_for(tmp_path))) as client:
            wait_until(lambda: order[:2] == ["colors/2", "grey/2"] and len(order) == 3, timeout=20)
            # ready while both version 1s are still loading
            wait_until(lambda: client.get("/health/ready").status_code == 200, timeout=20)
            versions = client.get("/health/ready").json()["models"]["grey"]["versions"]
            assert {v["version"]: v["state"] for v in versions} == {1: "loading", 2: "ready"}
            response = client.post("/models/grey/predict?version=1", files={"file": ("a.png", grey_image(0))})
            assert response.status_code == 503 and response.json()["error"]["code"] == "model_not_ready"
            assert client.post("/models/grey/predict", files={"file": ("a.png", grey_image(0))}).json()["version"] == 2
            release.set()
            wait_until(lambda: all(v.ready for n in ("grey", "colors") for v in client.app.state.registry.versions(n)))
            assert order[2:] == ["colors/1", "grey/1"]
    finally:
        release.set()


def test_a_version_that_left_the_store_is_freed_although_the_heap_was_frozen(models, tmp_path):
    # the heap is frozen after loads (service/heap.py), and frozen objects are never collected
    models.write(tmp_path, "grey", 1)
    models.write(tmp_path, "grey", 2)
    settings = settings_for(tmp_path, reload_interval_seconds=0.1, gc_freeze_after_load=True)
    gc.unfreeze()  # what earlier tests in this process froze: the count below is this app's
    with TestClient(create_app(settings)) as client:
        registry = client.app.state.registry
        wait_until(lambda: all(v.ready for v in registry.versions("grey")), timeout=20)
        # a Keras model is full of reference cycles: only a collection frees it
        keras_model = weakref.ref(registry.versions("grey")[0].probe._model)
        wait_until(lambda: gc.get_freeze_count() > 0, timeout=20)  # this app's freezer ran after the loads

        shutil.rmtree(tmp_path / "grey" / "1")
        wait_until(lambda: [v.version for v in registry.versions("grey")] == [2])
        wait_until(lambda: (gc.collect(), keras_model() is None)[1], timeout=10)
        assert client.post("/models/grey/predict", files={"file": ("a.png", grey_image(0))}).json()["version"] == 2


def test_a_load_failure_of_ours_is_logged_with_its_traceback_a_bad_store_in_one_line(
    models, tmp_path, monkeypatch, caplog
):
    import service.registry

    def broken(model):  # stands in for a bug of ours in the load path
        raise AttributeError("no_such_attribute")

    monkeypatch.setattr(service.registry, "describe_layers", broken)
    models.write(tmp_path, "grey", 1)
    models.write(tmp_path, "colors", 1, sha="0" * 64)  # the store's fault: its card's sha256 is wrong
    with (
        caplog.at_level(logging.WARNING, logger="service.registry"),
        TestClient(create_app(settings_for(tmp_path))) as client,
    ):
        wait_until(lambda: all(m["state"] == "failed" for m in client.get("/models").json()["models"]))
    failures = {
        record.getMessage().split()[0]: record for record in caplog.records if "failed to load" in record.getMessage()
    }
    assert "AttributeError: no_such_attribute" in failures["grey"].getMessage()
    assert failures["grey"].exc_info is not None and failures["grey"].exc_info[0] is AttributeError
    assert "sha256" in failures["colors"].getMessage() and not failures["colors"].exc_info


def test_a_replica_started_on_a_store_with_a_broken_newest_version_takes_no_traffic(models, tmp_path):
    # a rolling update to such a store then stops, with the old replicas serving
    models.write(tmp_path, "grey", 1)
    models.write(tmp_path, "grey", 2, sha="0" * 64)
    with TestClient(create_app(settings_for(tmp_path))) as client:
        registry = client.app.state.registry
        wait_until(lambda: [v.state for v in registry.versions("grey")] == ["ready", "failed"], timeout=20)
        assert client.get("/health/ready").status_code == 503
        assert client.get("/v2/health/ready").status_code == 503
        assert client.post("/models/grey/predict", files={"file": ("a.png", grey_image(0))}).json()["version"] == 1
