"""Issue 14 points 1-2 and issue 17's decoding, size-estimate and input-cache rows, in process.

Inspection has a bounded capacity of its own (503 + Retry-After beyond it, counted); our own bugs
in image handling are logged 500s, bad files 400s; very large images are shrunk before the
training preprocessing, absurd shapes and over-budget decodes refused from the header; a
list-encoded answer over budget is refused before its text is built; the input cache counts
the memory it really holds.
"""

from __future__ import annotations

import io
import logging
import threading
import tracemalloc
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import service.images
import service.inspector
from modelcard import InputSpec, image_to_array
from service.activations import ActivationProbe
from service.images import REDUCE_ABOVE_PIXELS, decode_image, open_image, shrink_for_decoding
from service.input_cache import InputCache
from service.main import create_app
from tests.service.conftest import color_image, grey_image, png, settings_for, wait_ready, wait_until

CATSDOGS_SPEC = InputSpec(height=128, width=128, channels=3, color_mode="rgb")


@pytest.fixture
def edges_store(tmp_path, models):
    root = tmp_path / "models"
    models.write(root, "edges", 1)
    models.write(root, "grey", 1)
    return root


# ---------------------------------------------------------------------------- point 2: honest errors


@pytest.mark.parametrize("where", ["decode", "open"])
def test_a_bug_in_image_handling_is_a_logged_500_not_a_400(store, monkeypatch, caplog, where):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug of ours")

    if where == "decode":
        monkeypatch.setattr(service.images, "image_to_array", broken)
    else:
        monkeypatch.setattr(service.images.Image, "open", broken)
    with TestClient(create_app(settings_for(store)), raise_server_exceptions=False) as client:
        wait_ready(client)
        with caplog.at_level(logging.ERROR, logger="service.errors"):
            response = client.post("/models/grey/predict", files={"file": ("a.png", grey_image(200))})
        assert response.status_code == 500
        assert response.json() == {"error": {"code": "internal_error", "message": "internal error; see the server log"}}
        logged = [record for record in caplog.records if record.exc_info]
        assert logged and "a bug of ours" in str(logged[0].exc_info[1])
        monkeypatch.undo()  # a bad file is still the client's fault
        response = client.post("/models/grey/predict", files={"file": ("a.png", grey_image(200)[:40])})
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_image"


def test_a_model_answering_nan_is_a_logged_500(tmp_path, models, caplog):
    """Predictions are encoded by serialisers that would write NaN into the JSON: the batcher,
    which every prediction route goes through, refuses non-finite probabilities first, as our
    fault (the model's), never the client's."""
    root = tmp_path / "models"
    models.write(root, "grey", 1, kind="grey-nan")
    with TestClient(create_app(settings_for(root)), raise_server_exceptions=False) as client:
        wait_ready(client)
        with caplog.at_level(logging.ERROR, logger="service.errors"):
            response = client.post("/models/grey/predict", files={"file": ("a.png", grey_image(200))})
        assert response.status_code == 500, response.text
        assert response.json()["error"]["code"] == "internal_error"
        logged = [record for record in caplog.records if record.exc_info]
        assert logged and "non-finite" in str(logged[0].exc_info[1])
        pixels = {"name": "pixels", "datatype": "UINT8", "shape": [1, 8, 8, 1], "data": [200] * 64}
        response = client.post("/v2/models/grey/infer", json={"inputs": [pixels]})
        assert response.status_code == 500 and response.json() == {"error": "internal error; see the server log"}


def test_bad_files_are_still_400s():
    spec = InputSpec(height=8, width=8, channels=1, color_mode="grayscale")
    good = png(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8))
    idat = good.index(b"IDAT") + 40
    scrambled = good[:idat] + bytes(255 - b for b in good[idat : idat + 200]) + good[idat + 200 :]
    truncated = (good[:30], good[: len(good) // 2], b"\x89PNG\r\n\x1a\n" + b"\x00" * 60, b"GIF89a" + b"\xff" * 20)
    for bad in (*truncated, scrambled):
        with pytest.raises(service.images.InvalidImage):
            decode_image(bad, spec, max_pixels=10_000)


# ---------------------------------------------------------------------------- issue 17: decoding


def test_absurd_aspect_ratios_are_refused_from_the_header(store):
    thin = png(np.zeros((1, 20_000), np.uint8))
    with TestClient(create_app(settings_for(store, max_image_aspect_ratio=50))) as client:
        wait_ready(client)
        response = client.post("/models/colors/predict", files={"file": ("thin.png", thin)})
        assert response.status_code == 422 and "20000x1" in response.json()["error"]["message"]
        wide = color_image((250, 0, 0), (400, 8))  # 50:1 is allowed
        assert client.post("/models/colors/predict", files={"file": ("w.png", wide)}).status_code == 200


def test_decoding_memory_is_capped_per_image(store):
    big = color_image((0, 250, 0), (1000, 1000))  # 3 MB of RGB once decoded
    with TestClient(create_app(settings_for(store, max_decode_bytes=2_000_000))) as client:
        wait_ready(client)
        response = client.post("/models/colors/predict", files={"file": ("big.png", big)})
        assert response.status_code == 413 and response.json()["error"]["code"] == "image_too_large"
        small = color_image((0, 250, 0), (500, 500))
        assert client.post("/models/colors/predict", files={"file": ("s.png", small)}).status_code == 200


def test_ordinary_images_get_exactly_the_training_preprocessing():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (1500, 2000, 3), np.uint8))  # 3 MP: not shrunk
    assert REDUCE_ABOVE_PIXELS >= 1500 * 2000 and shrink_for_decoding(image, CATSDOGS_SPEC) is image
    data = io.BytesIO()
    image.save(data, "PNG", compress_level=1)
    served = decode_image(data.getvalue(), CATSDOGS_SPEC, 40_000_000)
    np.testing.assert_array_equal(served, image_to_array(Image.open(io.BytesIO(data.getvalue())), CATSDOGS_SPEC))


@pytest.mark.parametrize("fmt,mode", [("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "RGBA"), ("GIF", "P")])
def test_very_large_images_are_shrunk_first_within_a_few_grey_levels(fmt, mode):
    rng = np.random.default_rng(2)
    smooth = Image.fromarray(rng.integers(0, 256, (40, 60, 3), np.uint8)).resize((2400, 1800), Image.BICUBIC)
    if mode == "RGBA":
        smooth.putalpha(Image.fromarray(rng.integers(0, 256, (40, 60), np.uint8)).resize((2400, 1800)))
    buffer = io.BytesIO()
    smooth.convert(mode).save(buffer, fmt, **({"compress_level": 1} if fmt == "PNG" else {}))
    data = buffer.getvalue()
    reference = image_to_array(Image.open(io.BytesIO(data)), CATSDOGS_SPEC).astype(int)
    image = open_image(data, 40_000_000)
    assert shrink_for_decoding(image, CATSDOGS_SPEC).size == (512, 512)
    served = decode_image(data, CATSDOGS_SPEC, 40_000_000).astype(int)
    assert np.abs(served - reference).max() <= 3 and np.abs(served - reference).mean() < 0.5


def test_a_large_jpeg_decodes_at_a_fraction_of_its_size():
    buffer = io.BytesIO()
    Image.new("RGB", (6000, 4000), (30, 120, 200)).save(buffer, "JPEG")
    tracemalloc.start()
    array = decode_image(buffer.getvalue(), CATSDOGS_SPEC, 40_000_000, max_decode_bytes=8_000_000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert array.shape == (128, 128, 3) and abs(int(array[..., 2].mean()) - 200) <= 2
    assert peak < 20_000_000  # 72 MB at full size; DCT scaling decodes 1500x1000


# ---------------------------------------------------------------------------- point 1: inspection capacity


def test_inspection_beyond_its_capacity_gets_503_with_retry_after_and_is_counted(edges_store, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    original = ActivationProbe.__call__

    def held(self, images, names):
        entered.set()
        assert release.wait(30)
        return original(self, images, names)

    monkeypatch.setattr(ActivationProbe, "__call__", held)
    settings = settings_for(edges_store, max_inspections_in_flight=1, retry_after_seconds=3)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        prediction = client.post("/models/edges/predict", files={"file": ("c.png", color_image((9, 99, 199)))})
        prediction_id = prediction.json()["predictions"][0]["id"]
        first: list = []
        worker = threading.Thread(target=lambda: first.append(client.get(f"/activations/{prediction_id}")))
        worker.start()
        assert entered.wait(30)
        refused = client.get(f"/activations/{prediction_id}/gradcam")
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "3"
        assert refused.json()["error"]["code"] == "queue_full"
        # layer outputs asked of v2 inference are activations too; its probabilities are not
        pixels = {"name": "pixels", "datatype": "UINT8", "shape": [1, 8, 8, 3], "data": [0] * 192}
        layered = client.post("/v2/models/edges/infer", json={"inputs": [pixels], "outputs": [{"name": "conv1"}]})
        assert layered.status_code == 503 and layered.headers["Retry-After"] == "3", layered.text
        plain = client.post("/v2/models/edges/infer", json={"inputs": [pixels]})
        assert plain.status_code == 200
        # predictions do not wait for inspection: its thread is busy, theirs is not
        assert client.post("/models/grey/predict", files={"file": ("g.png", grey_image(9))}).status_code == 200
        release.set()
        worker.join(30)
        assert first[0].status_code == 200
        assert client.get(f"/activations/{prediction_id}?layers=conv1").status_code == 200
        metrics = client.get("/metrics").text
        assert 'inspections_refused_total{kind="gradcam"} 1.0' in metrics
        assert 'inspections_refused_total{kind="activations"} 1.0' in metrics
        assert "inspections_in_flight 0.0" in metrics


# ---------------------------------------------------------------------------- issue 17: true size estimates


def test_a_list_answer_over_budget_is_refused_before_its_text_is_built(edges_store, monkeypatch):
    built = []
    original = service.inspector._activations_json

    def counting(*args):
        built.append(1)
        return original(*args)

    monkeypatch.setattr(service.inspector, "_activations_json", counting)
    images = [("file", (f"{i}.png", color_image((i * 20, 90, 200 - i * 10)))) for i in range(9)]
    with TestClient(create_app(settings_for(edges_store, max_activation_response_bytes=1 << 20))) as client:
        wait_ready(client)
        whole = client.post("/models/edges/activations?format=json&encoding=list", files=images)
        assert whole.status_code == 200 and built == [1]
        size = len(whole.content)
        values = sum(np.prod(layer["shape"]) for layer in whole.json()["layers"])
        assert size > 6 * values  # far more than the 4 bytes a value the old estimate assumed
    built.clear()
    budget = int(size * 0.8)  # over the old estimate, under the real text
    assert 4 * values < budget
    with TestClient(create_app(settings_for(edges_store, max_activation_response_bytes=budget))) as client:
        wait_ready(client)
        refused = client.post("/models/edges/activations?format=json&encoding=list", files=images)
        assert refused.status_code == 413 and refused.json()["error"]["code"] == "response_too_large"
        assert built == []  # refused from the estimate, nothing built
        assert client.post("/models/edges/activations?format=json", files=images).status_code == 200  # base64 fits


# ---------------------------------------------------------------------------- issue 17: the input cache


@pytest.mark.parametrize(
    "shape,dtype,most",
    [
        ((8, 8, 1), np.uint8, 4.0),
        ((28, 28, 1), np.uint8, 1.5),
        ((28, 28, 1), np.float32, 1.5),
        ((100, 100, 3), np.uint8, 1.1),
    ],
)
def test_input_cache_counts_at_least_what_it_holds(shape, dtype, most):
    """nbytes is the database's pages in use: at least the pixels and ids, and SQLite's own cost per
    row (a tiny image's row and index entries outweigh its pixels) within the bound documented."""
    count = 3000
    cache = InputCache(ttl_seconds=100, max_bytes=1 << 30)
    for _ in range(count):
        cache.put(uuid.uuid4().hex, "m", 1, np.zeros(shape, dtype))
    data = count * (np.zeros(shape, dtype).nbytes + 32)
    assert data <= cache.nbytes <= most * data


def test_input_cache_keeps_a_copy_not_a_view_of_a_larger_buffer():
    batch = np.zeros((64, 28, 28, 1), np.uint8)
    cache = InputCache(ttl_seconds=100, max_bytes=1 << 20)
    cache.put("a", "m", 1, batch[3])
    batch[3] = 7
    kept = cache.get("a").array
    assert not np.shares_memory(kept, batch) and not kept.flags.writeable
    assert kept.shape == (28, 28, 1) and kept.dtype == np.uint8 and not kept.any()


def test_input_cache_byte_budget_holds_while_filling(edges_store):
    with TestClient(create_app(settings_for(edges_store, input_cache_max_bytes=200_000))) as client:
        wait_ready(client)
        files = [("file", (f"{i}.png", grey_image(i))) for i in range(64)]
        for _ in range(20):  # 1,280 images of 8x8: past the budget
            assert client.post("/models/grey/predict", files=files).status_code == 200
        cache = client.app.state.input_cache
        wait_until(lambda: cache.nbytes > 0)
        assert 150_000 < cache.nbytes <= 200_000
        assert f"input_cache_bytes {float(cache.nbytes)}" in client.get("/metrics").text
