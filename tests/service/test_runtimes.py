"""Runtimes per model version: the parity gate, forcing a runtime, refusals, export at load.

Each test builds a tiny store (tests/service/conftest.py); exports of the tiny `colors` model are
made once per session and copied, since exporting costs seconds even for a tiny model.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from modelcard import CARD_FILE, EXPORT_FILES, ModelCard, file_sha256
from modelcard.exporting import export_model
from modelcard.parity import gate_inputs
from service.main import create_app
from service.registry import ModelRegistry
from service.runtimes import decision_key
from tests.service.conftest import build_colors_model, color_image, settings_for, wait_ready, wait_until
from training.export import export_version

COLORS = [(200, 30, 30), (20, 220, 40), (10, 20, 250), (120, 110, 100)]


@pytest.fixture(scope="session")
def exported_colors(models, tmp_path_factory) -> Path:
    """A `colors` version folder with both exports and parity inputs, written by `training export`."""
    root = tmp_path_factory.mktemp("exported")
    folder = models.write(root, "colors", 1)
    samples = root / "samples"
    samples.mkdir()
    for i, rgb in enumerate(COLORS):
        (samples / f"{i}.png").write_bytes(color_image(rgb))
    keras_bytes = (folder / "model.keras").read_bytes()
    export_version(folder, samples=[samples], source="four flat colours", log=lambda *_: None)
    assert (folder / "model.keras").read_bytes() == keras_bytes  # the export never alters model.keras
    return folder


def store_with(tmp_path: Path, version_folder: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(version_folder, root / "colors" / "1")
    return root


def runtime_of(client: TestClient, name: str = "colors") -> dict:
    return client.get(f"/models/{name}").json()["runtime"]


def candidate(info: dict, runtime: str) -> dict:
    return next(c for c in info["candidates"] if c["runtime"] == runtime)


def predict_all(client: TestClient) -> np.ndarray:
    files = [("file", (f"{i}.png", color_image(rgb))) for i, rgb in enumerate(COLORS)]
    response = client.post("/models/colors/predict", files=files)
    assert response.status_code == 200, response.text
    return np.array([[p["probabilities"][c] for c in ("red", "green", "blue")] for p in response.json()["predictions"]])


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def gauge(text: str, runtime: str) -> float:
    pattern = rf'^model_runtime\{{model="colors",precision="f32",runtime="{runtime}",version="1"\}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime", "tensorflow"])
def test_inference_runtime_forces_each_runtime_with_the_same_answers(exported_colors, tmp_path, runtime):
    root = store_with(tmp_path, exported_colors)
    settings = settings_for(root, inference_runtime=runtime, runtime_cache_dir=tmp_path / "cache")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        info = runtime_of(client)
        assert info["in_use"] == runtime and info["requested"] == runtime
        probabilities = predict_all(client)
        metrics = client.get("/metrics").text
    assert gauge(metrics, runtime) == 1.0
    assert [gauge(metrics, other) for other in ("openvino", "onnxruntime", "tensorflow") if other != runtime] == [0, 0]
    assert probabilities.argmax(axis=1).tolist()[:3] == [0, 1, 2]
    if runtime != "tensorflow":
        chosen = candidate(info, runtime)
        assert chosen["state"] == "in use" and chosen["artifact"] == "store"
        assert chosen["max_abs_diff"] <= 1e-4
        assert chosen["gate_inputs"] == 8 + len(COLORS)  # seeded noise + the stored real inputs
        assert not (tmp_path / "cache").exists()  # the store's exports were used
    keras_model = build_colors_model()
    pixels = np.stack([np.tile(np.array(rgb, np.float32), (8, 8, 1)) for rgb in COLORS])
    np.testing.assert_allclose(probabilities, keras_model(pixels).numpy(), atol=1e-4)


def test_auto_times_the_accepted_runtimes_and_shows_the_decision(exported_colors, tmp_path):
    root = store_with(tmp_path, exported_colors)
    with TestClient(create_app(settings_for(root, inference_runtime="auto"))) as client:
        wait_ready(client)
        info = runtime_of(client)
    assert info["requested"] == "auto" and "fastest" in info["decided_by"]
    states = {c["runtime"]: c["state"] for c in info["candidates"]}
    assert sorted(states) == ["onnxruntime", "openvino", "tensorflow"]
    assert list(states.values()).count("in use") == 1 and states[info["in_use"]] == "in use"
    for c in info["candidates"]:
        assert set(c["timings_ms"]) == {"1", "8"}, c  # the smallest and largest batch the batcher sends
        assert all(ms > 0 for ms in c["timings_ms"].values())


def test_auto_reuses_its_cached_decision_and_decides_afresh_when_it_no_longer_holds(exported_colors, tmp_path):
    root = store_with(tmp_path, exported_colors)
    settings = settings_for(root, inference_runtime="auto", runtime_cache_dir=tmp_path / "cache")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        first = runtime_of(client)
    [decision_file] = (tmp_path / "cache" / "decisions" / "colors" / "1").glob("*.json")
    assert json.loads(decision_file.read_text())["runtime"] == first["in_use"]

    with TestClient(create_app(settings)) as client:  # a restart with the same cache: nothing is timed
        wait_ready(client)
        second = runtime_of(client)
        assert predict_all(client).argmax(axis=1).tolist()[:3] == [0, 1, 2]
    assert second["in_use"] == first["in_use"] and "decision cached at" in second["decided_by"]
    assert all(not c["timings_ms"] for c in second["candidates"])
    states = sorted(c["state"] for c in second["candidates"])
    assert states.count("in use") == 1 and states.count("not tried") == 1 + (first["in_use"] == "tensorflow")
    if first["in_use"] != "tensorflow":  # the cached choice still had to pass the gate
        assert candidate(second, first["in_use"])["max_abs_diff"] <= 1e-4

    # the cached runtime's file goes missing: it is refused, and the runtimes are timed afresh
    decision_file.write_text(json.dumps({"runtime": "onnxruntime", "precision": "f32"}))
    (root / "colors" / "1" / "model.onnx").unlink()
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        third = runtime_of(client)
    assert "fastest" in third["decided_by"] and candidate(third, "onnxruntime")["state"] == "refused"
    assert json.loads(decision_file.read_text())["runtime"] == third["in_use"] != "onnxruntime"


def test_the_decision_key_follows_what_the_timing_depends_on(exported_colors):
    card = ModelCard.model_validate_json((exported_colors / CARD_FILE).read_text())
    base = decision_key(card, settings_for(exported_colors))
    assert base == decision_key(card, settings_for(exported_colors))
    assert base != decision_key(card, settings_for(exported_colors, max_batch_size=16))
    assert base != decision_key(card, settings_for(exported_colors, tf_intra_op_threads=1))
    assert base != decision_key(card.model_copy(update={"sha256": "1" * 64}), settings_for(exported_colors))


def export_perturbed_onnx(folder: Path):
    """Replace `folder`'s ONNX export (and its card record) with a real, loadable one of a model that
    disagrees with model.keras; returns that model and the new card."""
    perturbed = build_colors_model()
    kernel, bias = perturbed.get_layer("probabilities").get_weights()
    perturbed.get_layer("probabilities").set_weights([kernel, bias + np.array([0.05, 0, 0], np.float32)])
    card = ModelCard.model_validate_json((folder / CARD_FILE).read_text())
    card = card.model_copy(update={"exports": {**card.exports, "onnx": export_model(perturbed, folder, "onnx")}})
    (folder / CARD_FILE).write_text(card.model_dump_json())
    return perturbed, card


def test_a_perturbed_export_fails_the_gate_and_tensorflow_serves(models, exported_colors, tmp_path):
    root = store_with(tmp_path, exported_colors)
    folder = root / "colors" / "1"
    export_perturbed_onnx(folder)
    with TestClient(create_app(settings_for(root, inference_runtime="onnxruntime"))) as client:
        wait_ready(client)
        info = runtime_of(client)
        probabilities = predict_all(client)
    assert info["in_use"] == "tensorflow"
    refused = candidate(info, "onnxruntime")
    assert refused["state"] == "refused" and refused["reason"].startswith("parity gate failed")
    assert refused["max_abs_diff"] > 1e-4
    assert probabilities.argmax(axis=1).tolist()[:3] == [0, 1, 2]


def test_a_corrupt_or_altered_artifact_refuses_that_runtime_only(exported_colors, tmp_path):
    root = store_with(tmp_path, exported_colors)
    folder = root / "colors" / "1"
    # OpenVINO: the weights file no longer matches the card's sha256
    weights = folder / EXPORT_FILES["openvino"][1]
    weights.write_bytes(weights.read_bytes()[:-16])
    # ONNX Runtime: garbage recorded with its own sha256, so the checksum passes and loading fails
    (folder / "model.onnx").write_bytes(b"not an onnx model" * 10)
    card = json.loads((folder / CARD_FILE).read_text())
    card["exports"]["onnx"]["files"]["model.onnx"] = file_sha256(folder / "model.onnx")
    (folder / CARD_FILE).write_text(json.dumps(card))
    with TestClient(create_app(settings_for(root, inference_runtime="auto"))) as client:
        wait_ready(client)
        info = runtime_of(client)
        assert client.get("/health/ready").status_code == 200
        probabilities = predict_all(client)
    assert info["in_use"] == "tensorflow"
    assert candidate(info, "openvino")["reason"].startswith("sha256 mismatch: model.bin")
    assert candidate(info, "onnxruntime")["reason"].startswith("could not load")
    assert str(root) not in json.dumps(info)  # reasons show no server paths
    assert probabilities.argmax(axis=1).tolist()[:3] == [0, 1, 2]


def test_a_store_without_exports_is_exported_into_the_cache_never_into_the_store(models, tmp_path):
    root = tmp_path / "models"
    models.write(root, "colors", 1)
    before = snapshot(root)
    cache = tmp_path / "cache"
    # read-only (root may write anyway: the snapshot comparison is what checks it)
    for path in [*root.rglob("*"), root]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        settings = settings_for(root, inference_runtime="auto", runtime_cache_dir=cache)
        with TestClient(create_app(settings)) as client:
            wait_ready(client)
            info = runtime_of(client)
            probabilities = predict_all(client)
        # a restart finds the cached exports
        with TestClient(create_app(settings)) as client:
            wait_ready(client)
            again = runtime_of(client)
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert snapshot(root) == before
    for runtime in ("openvino", "onnxruntime"):
        assert candidate(info, runtime)["artifact"] == "exported at load"
        assert candidate(info, runtime)["state"] in ("accepted", "in use")
    # the restart reuses the cached decision: only the runtime in use is built, from the cache
    assert again["in_use"] == info["in_use"]
    if again["in_use"] != "tensorflow":
        assert candidate(again, again["in_use"])["artifact"] == "cache"
    assert "seeded noise images (the version stores no real inputs)" in info["decided_by"]
    cached = {p.name for p in cache.rglob("*") if p.is_file() and "decisions" not in p.parts}
    assert cached == {"model.onnx", "model.xml", "model.bin"}
    assert len(list((cache / "decisions").rglob("*.json"))) == 1
    assert probabilities.argmax(axis=1).tolist()[:3] == [0, 1, 2]


def hold_back_keras(monkeypatch) -> threading.Event:
    """Keep every version's Keras model from loading until the returned event is set."""
    released = threading.Event()
    load_keras = ModelRegistry._load_keras

    def held_back(self, entry, choice):
        assert released.wait(30)
        return load_keras(self, entry, choice)

    monkeypatch.setattr(ModelRegistry, "_load_keras", held_back)
    return released


def decide_once(root: Path, settings, runtime: str) -> Path:
    """Start once so `auto` caches its decision (with the Keras outputs), then make `runtime` the cached choice."""
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        runtime_of(client)  # once the Keras model is loaded: TensorFlow is timed and the decision written
    [decision_file] = (settings.runtime_cache_dir / "decisions" / "colors" / "1").glob("*.json")
    decision = json.loads(decision_file.read_text())
    assert len(decision["reference"]["outputs"]) == 8 + len(COLORS)  # Keras' answers on the gate inputs
    decision_file.write_text(json.dumps(decision | {"runtime": runtime}))
    return decision_file


def test_a_restart_serves_from_the_cached_decision_before_the_keras_model_loads(exported_colors, tmp_path, monkeypatch):
    root = store_with(tmp_path, exported_colors)
    settings = settings_for(
        root, inference_runtime="auto", runtime_cache_dir=tmp_path / "cache", keras_wait_seconds=0.3
    )
    decide_once(root, settings, "onnxruntime")
    released = hold_back_keras(monkeypatch)
    with TestClient(create_app(settings)) as client:
        wait_until(lambda: client.get("/health/ready").status_code == 200, 30)
        assert predict_all(client).argmax(axis=1).tolist()[:3] == [0, 1, 2]  # served without the Keras model
        health = client.get("/health/ready").json()
        assert health["models"]["colors"]["versions"][0]["keras_loaded"] is False and health["background_work"] == 1
        waiting = client.get("/models/colors")  # its layers are what is missing: 503 after keras_wait_seconds
        assert waiting.status_code == 503 and "layers are still loading" in waiting.json()["error"]["message"]
        image = client.post("/models/colors/predict", files={"file": ("r.png", color_image(COLORS[0]))})
        assert client.get(f"/activations/{image.json()['predictions'][0]['id']}").status_code == 503
        released.set()
        wait_until(lambda: client.get("/models/colors").status_code == 200, 30)
        info = runtime_of(client)
        activations = client.get(f"/activations/{image.json()['predictions'][0]['id']}")
        assert activations.status_code == 200
        assert client.get("/health/ready").json()["models"]["colors"]["versions"][0]["keras_loaded"] is True
    assert info["in_use"] == "onnxruntime" and "against the Keras outputs cached with it" in info["decided_by"]
    assert candidate(info, "tensorflow")["reason"].startswith("the reference: the loaded Keras model agrees")
    assert candidate(info, "onnxruntime")["max_abs_diff"] <= 1e-4


def test_a_cached_reference_that_disagrees_is_caught_either_way(exported_colors, tmp_path):
    root = store_with(tmp_path, exported_colors)
    folder = root / "colors" / "1"
    settings = settings_for(root, inference_runtime="auto", runtime_cache_dir=tmp_path / "cache")
    decision_file = decide_once(root, settings, "onnxruntime")
    decision = json.loads(decision_file.read_text())

    # outputs nothing reproduces: the cached runtime fails the gate, so Keras loads first and decides
    shifted = (np.array(decision["reference"]["outputs"]) + 0.01).tolist()
    decision_file.write_text(json.dumps(decision | {"reference": decision["reference"] | {"outputs": shifted}}))
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        info = runtime_of(client)
    assert "Keras outputs cached" not in info["decided_by"] and "decision cached at" in info["decided_by"]
    assert info["in_use"] == "onnxruntime"  # the cached choice, gated against the Keras model itself

    # outputs that a wrong export reproduces: it serves at first, the Keras model catches it, TensorFlow takes over
    perturbed, card = export_perturbed_onnx(folder)
    inputs, _ = gate_inputs(card, folder)
    wrong = perturbed(inputs).numpy().tolist()
    key = decision_key(card, settings)  # the card changed (the export's sha256): the decision moves with it
    reference = decision["reference"] | {"outputs": wrong}
    (decision_file.parent / f"{key}.json").write_text(json.dumps(decision | {"reference": reference}))
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        info = runtime_of(client)
        probabilities = predict_all(client)
    assert info["in_use"] == "tensorflow"
    refused = candidate(info, "onnxruntime")
    assert refused["state"] == "refused" and refused["reason"].startswith("disagreed with the loaded Keras model")
    assert json.loads((decision_file.parent / f"{key}.json").read_text())["runtime"] == "tensorflow"  # not again
    np.testing.assert_allclose(
        probabilities, build_colors_model()(np.stack([np.tile(np.float32(c), (8, 8, 1)) for c in COLORS])), atol=1e-4
    )


def test_a_first_start_serves_from_the_stored_outputs_then_times_tensorflow(exported_colors, tmp_path, monkeypatch):
    root = store_with(tmp_path, exported_colors)
    cache = tmp_path / "cache"
    settings = settings_for(root, inference_runtime="auto", runtime_cache_dir=cache, keras_wait_seconds=0.3)
    released = hold_back_keras(monkeypatch)
    with TestClient(create_app(settings)) as client:
        wait_until(lambda: client.get("/health/ready").status_code == 200, 30)
        assert predict_all(client).argmax(axis=1).tolist()[:3] == [0, 1, 2]  # no Keras model yet
        assert client.get("/models/colors").status_code == 503
        assert not (cache / "decisions").exists()  # decided only once TensorFlow is timed too
        released.set()
        wait_until(lambda: client.get("/models/colors").status_code == 200, 30)
        info = runtime_of(client)
        probabilities = predict_all(client)
    assert "against the Keras outputs stored with the version" in info["decided_by"]
    assert "TensorFlow timed once its model loaded" in info["decided_by"]
    for runtime in ("openvino", "onnxruntime", "tensorflow"):
        assert set(candidate(info, runtime)["timings_ms"]) == {"1", "8"}, info
    [decision_file] = (cache / "decisions" / "colors" / "1").glob("*.json")
    decision = json.loads(decision_file.read_text())
    assert decision["runtime"] == info["in_use"] and set(decision["timings_ms"]) >= {"tensorflow f32"}
    keras_model = build_colors_model()
    pixels = np.stack([np.tile(np.float32(c), (8, 8, 1)) for c in COLORS])
    np.testing.assert_allclose(probabilities, keras_model(pixels).numpy(), atol=1e-4)


def test_each_candidate_shows_the_timing_round_that_decided(exported_colors, tmp_path, monkeypatch):
    """Exported runtimes are timed against each other at load, TensorFlow against the serving one
    once Keras loads: the second round must not overwrite what decided the first."""
    import service.runtimes

    rounds = iter([{"openvino": 1.0, "onnxruntime": 2.0}, {"tensorflow": 9.0, "openvino": 3.0}])

    def fake_time(candidates, shape, sizes, repeats):
        ms = next(rounds)
        for runtime in candidates:
            runtime.timings_ms = {size: ms[runtime.runtime] * size for size in sizes}

    monkeypatch.setattr(service.runtimes, "_time", fake_time)
    root = store_with(tmp_path, exported_colors)
    settings = settings_for(
        root, inference_runtime="auto", runtime_cache_dir=tmp_path / "cache", keras_wait_seconds=0.3
    )
    released = hold_back_keras(monkeypatch)
    with TestClient(create_app(settings)) as client:
        wait_until(lambda: client.get("/health/ready").status_code == 200, 30)
        released.set()
        wait_until(lambda: client.get("/models/colors").status_code == 200, 30)
        info = runtime_of(client)
    assert info["in_use"] == "openvino"
    assert candidate(info, "openvino")["timings_ms"] == {"1": 1.0, "8": 8.0}  # the round that beat onnxruntime
    assert candidate(info, "onnxruntime")["timings_ms"] == {"1": 2.0, "8": 16.0}
    assert candidate(info, "tensorflow")["timings_ms"] == {"1": 9.0, "8": 72.0}
    assert (
        "against openvino timed again alongside it: {1: 9.0, 8: 72.0} against {1: 3.0, 8: 24.0}" in info["decided_by"]
    )


def test_damaged_stored_outputs_mean_loading_keras_first(exported_colors, tmp_path, monkeypatch):
    root = store_with(tmp_path, exported_colors)
    outputs = root / "colors" / "1" / "parity_outputs.npy"
    outputs.write_bytes(outputs.read_bytes()[:-8] + b"\0" * 8)  # no longer its card's sha256
    released = hold_back_keras(monkeypatch)  # never set: the fast path must not be taken
    settings = settings_for(root, inference_runtime="auto", runtime_cache_dir=tmp_path / "cache")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        info = runtime_of(client)
        assert predict_all(client).argmax(axis=1).tolist()[:3] == [0, 1, 2]
    assert not released.is_set()
    assert "stored with the version" not in info["decided_by"] and "fastest" in info["decided_by"]
    assert candidate(info, "tensorflow")["reason"] == "the reference: the Keras model itself"
