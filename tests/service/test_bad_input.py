"""Every bad input of issue 4 gets its status and the one JSON error body, and the server stays up."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.errors import error_response
from service.main import create_app
from tests.service.conftest import color_image, grey_image, png, settings_for, wait_ready, wait_until

MAX_BODY = 3 * 1024 * 1024
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def client(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    models.write(root, "grey", 1)
    models.write(root, "colors", 1)
    models.write(root, "colors", 2, sha="0" * 64)  # refused: the card's sha256 does not match
    models.write(root, "broken", 1, kind="grey", sha="1" * 64)  # its only version fails
    settings = settings_for(
        root,
        max_body_bytes=MAX_BODY,
        max_images_per_request=4,
        max_image_pixels=MAX_PIXELS,
        max_queue_size=4,
        # every batch through the inference thread: the queue-full test holds that thread to fill
        # the queue, and these tiny models' calls would otherwise run on the loop once timed fast
        inline_call_us=0,
    )
    with TestClient(create_app(settings)) as client:
        # every version, not each model: colors is "failed" by its v2 while its v1 still loads
        models = lambda: client.get("/models").json()["models"]  # noqa: E731
        wait_until(lambda: all(v["state"] != "loading" for m in models() for v in m["versions"]))
        yield client


@pytest.fixture(autouse=True)
def server_stays_up(client):
    yield
    response = client.post("/models/grey/predict", files={"file": ("ok.png", grey_image(255))})
    assert response.status_code == 200, "the server must keep answering after a bad request"


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    assert "Traceback" not in response.text and "/tmp" not in response.text and "site-packages" not in response.text
    return body["error"]


def predict_file(client, data: bytes, model: str = "grey", filename: str = "x.png"):
    return client.post(f"/models/{model}/predict", files={"file": (filename, data)})


# ---------------------------------------------------------------------------- 404


def test_unknown_model_is_404(client):
    error = assert_error(predict_file(client, grey_image(0), model="nope"), 404, "model_not_found")
    assert "nope" in error["message"]
    assert_error(client.get("/models/nope"), 404, "model_not_found")
    assert_error(client.post("/predict?model=nope", files={"file": ("x.png", grey_image(0))}), 404)


def test_unknown_version_is_404(client):
    response = client.post("/models/grey/predict?version=7", files={"file": ("x.png", grey_image(0))})
    assert_error(response, 404, "version_not_found")
    assert_error(client.get("/models/grey?version=7"), 404, "version_not_found")


def test_unknown_route_and_wrong_method(client):
    assert_error(client.get("/no/such/route"), 404, "not_found")
    response = client.get("/models/grey/predict")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


# ---------------------------------------------------------------------------- 400 / 422: not an image


def test_not_an_image_is_400(client):
    assert_error(predict_file(client, b"just some text, not an image at all", filename="x.txt"), 400, "invalid_image")


def test_empty_file_is_400(client):
    assert_error(predict_file(client, b""), 400, "invalid_image")


def test_truncated_image_is_400(client):
    photo = color_image((10, 200, 30), size=(64, 64), fmt="JPEG")
    assert_error(predict_file(client, photo[: len(photo) // 2], model="colors"), 400, "invalid_image")
    image = png(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    assert_error(predict_file(client, image[: len(image) - 40]), 400, "invalid_image")


def test_corrupt_image_is_400(client):
    image = bytearray(png(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)))
    image[60:200] = bytes(140)  # garbage in the compressed data
    assert_error(predict_file(client, bytes(image)), 400, "invalid_image")


def test_a_bad_image_in_a_batch_fails_the_request(client):
    files = [("file", ("a.png", grey_image(0))), ("file", ("b.png", b"\x89PNG\r\n\x1a\nnot really"))]
    assert_error(client.post("/models/grey/predict", files=files), 400)


# ---------------------------------------------------------------------------- 415


def test_unsupported_image_format_is_415(client):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buffer, "PCX")  # Pillow reads it; the service does not
    error = assert_error(predict_file(client, buffer.getvalue(), model="colors", filename="a.pcx"), 415)
    assert error["code"] == "unsupported_format" and "PCX" in error["message"]


def test_a_huge_image_in_an_unsupported_format_is_415(client):
    """Found by the fuzz test: naming the format re-reads the header with every Pillow plugin, and
    a QOI header declaring 20000 x 20000 made that raise Pillow's decompression-bomb error (a 500)."""
    qoi = b"qoif" + struct.pack(">II", 20_000, 20_000) + b"\x03\x00"
    error = assert_error(predict_file(client, qoi, model="colors", filename="a.qoi"), 415, "unsupported_format")
    assert "huge" in error["message"]


def test_pdf_is_415(client):
    assert_error(predict_file(client, b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"), 415)


def test_unsupported_content_type_is_415(client):
    response = client.post("/models/grey/predict", content=grey_image(0), headers={"content-type": "image/png"})
    assert_error(response, 415, "unsupported_format")
    assert_error(client.post("/models/grey/predict", content=b"instances"), 415)


# ---------------------------------------------------------------------------- 413


def test_body_over_the_limit_is_413(client):
    response = client.post("/models/grey/predict", files={"file": ("big.png", b"\0" * (MAX_BODY + 1))})
    assert_error(response, 413, "payload_too_large")


def test_body_over_the_limit_without_content_length_is_413(client):
    def chunks():
        for _ in range(4):
            yield b"\0" * (MAX_BODY // 2)

    response = client.post("/models/grey/predict", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "payload_too_large")


def test_too_many_images_is_413(client):
    files = [("file", (f"{i}.png", grey_image(0))) for i in range(5)]
    assert_error(client.post("/models/grey/predict", files=files), 413, "too_many_images")
    instances = [{"b64": base64.b64encode(grey_image(0)).decode()}] * 5
    assert_error(client.post("/models/grey/predict", json={"instances": instances}), 413, "too_many_images")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, followed by almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_413_before_decoding(client):
    # 3000x3000: under Pillow's own bomb limit, over the service's. Its data is a few bytes, so
    # decoding it would fail as truncated (400): a 413 shows the size was checked first.
    error = assert_error(predict_file(client, _png_header_only(3000, 3000)), 413, "image_too_large")
    assert "3000x3000" in error["message"]
    big = png(np.zeros((1001, 1000), np.uint8))  # a real, small file of 1,001,000 pixels
    assert_error(predict_file(client, big), 413, "image_too_large")


# ---------------------------------------------------------------------------- 422


def test_pixel_array_of_the_wrong_shape_is_422(client):
    error = assert_error(client.post("/models/colors/predict", json={"instances": [np.zeros((8, 8)).tolist()]}), 422)
    assert "[8, 8, 3]" in error["message"]
    assert_error(client.post("/models/grey/predict", json={"instances": [np.zeros((4, 4)).tolist()]}), 422)
    assert_error(client.post("/models/grey/predict", json={"instances": [[[0, 1], [2]]]}), 422)


def test_nan_and_infinity_are_422(client):
    for literal in ("NaN", "Infinity", "-Infinity"):
        rows = ", ".join(["[" + ", ".join(["0"] * 8) + "]"] * 7 + ["[" + ", ".join(["0"] * 7 + [literal]) + "]"])
        body = '{"instances": [[' + rows + "]]}"
        response = client.post("/models/grey/predict", content=body, headers={"content-type": "application/json"})
        assert "NaN or infinity" in assert_error(response, 422, "invalid_input")["message"]


def test_pixels_out_of_range_are_422(client):
    assert_error(client.post("/models/grey/predict", json={"instances": [np.full((8, 8), 256).tolist()]}), 422)
    assert_error(client.post("/models/grey/predict", json={"instances": [np.full((8, 8), -0.5).tolist()]}), 422)


def test_wrong_json_is_422(client):
    cases = [
        b"{not json",
        b"[1, 2, 3]",
        b'{"images": []}',
        b'{"instances": {"b64": "x"}}',
        b'{"instances": []}',
        b'{"instances": [42]}',
        b'{"instances": [{"b64": "%%% not base64 %%%"}]}',
        b'{"instances": [{"url": "http://example.com/a.png"}]}',
        b'{"instances": [[[0]]], "top_k": "many"}',
    ]
    for body in cases:
        response = client.post("/models/grey/predict", content=body, headers={"content-type": "application/json"})
        assert_error(response, 422, "invalid_input")


def test_bad_query_parameters_are_422(client):
    for query in ("top_k=0", "top_k=abc", "version=x"):
        assert_error(client.post(f"/models/grey/predict?{query}", files={"file": ("a.png", grey_image(0))}), 422)


def test_multipart_without_files_is_422(client):
    assert_error(client.post("/models/grey/predict", data={"top_k": "1"}, files={"other": ("a.png", b"x")}), 422)
    assert_error(client.post("/models/grey/predict", files=[("file", (None, b"not a file upload"))]), 422)
    assert_error(client.post("/predict", files={"file": ("a.png", grey_image(0))}), 422)  # no model named


def test_malformed_multipart_is_400(client):
    response = client.post(
        "/models/grey/predict",
        content=b"--abc\r\nContent-Disposition: form-data\r\n\r\nxx",
        headers={"content-type": "multipart/form-data; boundary=abc"},
    )
    assert response.status_code in (400, 422)
    assert_error(response, response.status_code)


def test_422_does_not_echo_a_large_request(client):
    marker = 123.456789
    big = np.full((250, 250, 3), marker).tolist()  # about 2.4 MB of JSON, wrong shape
    body = json.dumps({"instances": [big]}).encode()
    assert 2_000_000 < len(body) < MAX_BODY
    response = client.post("/models/colors/predict", content=body, headers={"content-type": "application/json"})
    assert_error(response, 422)
    assert len(response.content) < 1000 and "123.45" not in response.text
    # FastAPI's own validation errors are rendered without the input too
    response = client.post("/models/grey/predict?top_k=" + "9" * 5000, files={"file": ("a.png", grey_image(0))})
    assert_error(response, 422)
    assert len(response.content) < 1000


# ---------------------------------------------------------------------------- 503


def test_failed_version_is_503_and_previous_keeps_serving(client):
    error = assert_error(client.post("/models/colors/predict?version=2", files={"file": ("a.png", b"x")}), 503)
    assert error["code"] == "model_not_ready" and "sha256" in error["message"]
    response = client.post("/models/colors/predict", files={"file": ("a.png", color_image((255, 0, 0)))})
    assert response.status_code == 200 and response.json()["version"] == 1


def test_model_with_no_ready_version_is_503(client):
    response = predict_file(client, grey_image(0), model="broken")
    assert_error(response, 503, "model_not_ready")
    assert "retry-after" not in response.headers  # it failed: waiting will not help


def test_the_protocol_routes_keep_timeout_statuses_and_make_other_client_errors_400():
    # the Open Inference Protocol answers a client mistake with 400; a timeout is not a mistake in the request
    for status, expected in [(408, 408), (499, 499), (413, 413), (503, 503), (415, 400), (422, 400)]:
        response = error_response(status, "code", "message", path="/v2/models/m/infer")
        assert response.status_code == expected and json.loads(response.body) == {"error": "message"}
        assert error_response(status, "code", "message", path="/models/m/predict").status_code == status


def test_readiness_reports_failures_while_liveness_stays_up(client):
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not_ready"
    colors = body["models"]["colors"]
    assert colors["state"] == "failed" and colors["default_version"] == 1
    failed = [v for v in colors["versions"] if v["state"] == "failed"]
    assert [v["version"] for v in failed] == [2] and "sha256 mismatch" in failed[0]["reason"]
    assert body["models"]["broken"]["default_version"] is None
    assert client.get("/health/live").status_code == 200


def test_queue_full_is_503_with_retry_after(client):
    gate = threading.Event()
    executor = client.app.state.inference_executor
    executor.submit(gate.wait, 10)  # the model thread is busy: requests pile up in the queue
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(predict_file, client, grey_image(0))
            batcher = client.app.state.registry.resolve("grey").batcher
            # the first request's batch is taken from the queue and waits for the busy model thread
            wait_until(lambda: executor._work_queue.qsize() == 1, timeout=10)
            files = [("file", (f"{i}.png", grey_image(0))) for i in range(4)]
            filling = pool.submit(client.post, "/models/grey/predict", files=files)
            wait_until(lambda: batcher.depth == 4, timeout=5)
            response = predict_file(client, grey_image(0))
            error = assert_error(response, 503, "queue_full")
            assert response.headers["retry-after"] == "1"
            assert "queue" in error["message"]
            gate.set()
            assert first.result(10).status_code == 200
            assert filling.result(10).status_code == 200
    finally:
        gate.set()


def test_model_still_loading_is_503(models, tmp_path, monkeypatch):
    import service.registry

    release = threading.Event()
    real_load = service.registry.load_verified_model

    def slow_load(path, sha256):
        release.wait(10)
        return real_load(path, sha256)

    monkeypatch.setattr(service.registry, "load_verified_model", slow_load)
    models.write(tmp_path, "grey", 1)
    try:
        with TestClient(create_app(settings_for(tmp_path))) as client:
            ready = client.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json()["models"]["grey"]["versions"] == [
                {"version": 1, "state": "loading", "reason": None, "keras_loaded": False}
            ]
            loading = predict_file(client, grey_image(0))
            error = assert_error(loading, 503, "model_not_ready")
            assert "loading" in error["message"]
            assert loading.headers["retry-after"] == str(client.app.state.settings.retry_after_seconds)
            v2 = client.post(
                "/v2/models/grey/infer",
                json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
            )
            assert v2.status_code == 503 and "retry-after" in v2.headers, v2.text
            release.set()
            wait_ready(client)
            assert predict_file(client, grey_image(0)).status_code == 200
    finally:
        release.set()


def test_empty_store_is_not_ready(tmp_path):
    with TestClient(create_app(settings_for(tmp_path / "empty"))) as client:
        response = client.get("/health/ready")
        assert response.status_code == 503 and "no models" in response.json()["reason"]
        assert client.get("/health/live").status_code == 200
