"""The activations API over HTTP: GET /activations/{id}, POST /models/{name}/activations, kernels, Grad-CAM.

Every expected value is computed here independently of the service: conv outputs with
scipy's cross-correlation from the layer's weights, Grad-CAM from the closed form it takes
when a global average pool feeds the softmax layer.
"""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from scipy.signal import correlate2d

from service.main import create_app
from tests.service.conftest import build_edges_model, color_image, grey_image, settings_for, wait_ready, wait_until

RNG = np.random.default_rng(11)
PIXELS = [RNG.uniform(0, 255, (8, 8, 3)).round(2) for _ in range(3)]  # exact in JSON, not symmetric


@pytest.fixture(scope="module")
def client(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    for name in ("grey", "colors", "edges"):
        models.write(root, name, 1)
    with TestClient(create_app(settings_for(root, max_images_per_request=4))) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def edges():
    return build_edges_model()  # the same seeded weights the service loaded


def predict_pixels(client, model: str, pixels: np.ndarray) -> dict:
    response = client.post(f"/models/{model}/predict", json={"instances": [pixels.tolist()]})
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def decode(layer: dict) -> np.ndarray:
    """A JSON layer entry as an array, read the way the API documents it."""
    assert layer["dtype"] == "float32"
    if layer["encoding"] == "base64":
        values = np.frombuffer(base64.b64decode(layer["data"]), dtype="<f4")
        return values.reshape(layer["shape"])
    return np.asarray(layer["data"], dtype=np.float32).reshape(layer["shape"])


def as_json(client, url: str) -> dict[str, np.ndarray]:
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return {layer["name"]: decode(layer) for layer in response.json()["layers"]}


def as_npz(response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-npz"
    with np.load(io.BytesIO(response.content), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def error(response, status: int, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    if code is not None:
        assert body["code"] == code
    return body["message"]


def image_of(response, mode: str) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.mode == mode
    return image


# ---------------------------------------------------------------------------- correctness


def cross_correlation(image: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """`valid` cross-correlation of an (h, w, in) image with (kh, kw, in, out) kernels, plus bias."""
    outputs = []
    for f in range(kernel.shape[3]):
        total = sum(correlate2d(image[:, :, c], kernel[:, :, c, f], mode="valid") for c in range(image.shape[2]))
        outputs.append(total + bias[f])
    return np.stack(outputs, axis=-1)


def test_first_conv_is_cross_correlation_of_the_rescaled_input(client, edges):
    prediction = predict_pixels(client, "edges", PIXELS[0])
    conv1 = as_json(client, f"/activations/{prediction['id']}?layers=conv1")["conv1"]
    assert conv1.shape == (1, 6, 6, 2)
    kernel, bias = edges.get_layer("conv1").get_weights()
    rescaled = PIXELS[0].astype(np.float32) / np.float32(255)
    expected = np.maximum(cross_correlation(rescaled, kernel, bias), 0)  # conv1's activation is ReLU
    np.testing.assert_allclose(conv1[0], expected, atol=1e-4)
    assert (expected > 0.05).sum() > 10  # enough values survive the ReLU for the comparison to mean something
    # true convolution (flipped kernels) is a different operation: it must not match
    flipped = np.maximum(cross_correlation(rescaled, kernel[::-1, ::-1], bias), 0)
    assert np.abs(conv1[0] - flipped).max() > 0.05


def test_last_layer_is_what_predict_returned(client):
    for model, pixels, labels in [("edges", PIXELS[1], ["left", "right"]), ("grey", PIXELS[2][:, :, 0], None)]:
        prediction = predict_pixels(client, model, pixels)
        labels = labels or ["dark", "bright"]
        returned = np.array([prediction["probabilities"][label] for label in labels], np.float32)
        last = as_json(client, f"/activations/{prediction['id']}?layers=probabilities")["probabilities"]
        np.testing.assert_allclose(last[0], returned, atol=1e-6)


def test_batch_equals_one_image_at_a_time(client):
    files = [("file", (f"{i}.png", color_image(rgb))) for i, rgb in enumerate([(200, 10, 50), (3, 90, 250), (0, 0, 0)])]
    response = client.post("/models/edges/activations?format=npz", files=files)
    batch = as_npz(response)
    ids = response.headers["x-prediction-id"].split(",")
    assert len(ids) == 3 and all(len(i) == 32 for i in ids)
    for i, (name, content) in enumerate(files):
        alone = as_npz(client.post("/models/edges/activations?format=npz", files=[(name, content)]))
        again = as_npz(client.get(f"/activations/{ids[i]}?format=npz"))  # the batch's ids are usable
        assert list(alone) == list(batch)
        for layer in batch:
            np.testing.assert_allclose(batch[layer][i : i + 1], alone[layer], atol=1e-6, err_msg=layer)
            np.testing.assert_allclose(again[layer], alone[layer], atol=1e-6, err_msg=layer)


def test_base64_list_and_npz_are_the_same_arrays(client):
    prediction = predict_pixels(client, "edges", PIXELS[2])
    url = f"/activations/{prediction['id']}"
    encoded = as_json(client, url)
    listed = as_json(client, url + "?encoding=list")
    packed = as_npz(client.get(url + "?format=npz"))
    assert list(encoded) == list(listed) == list(packed)
    for name in encoded:
        np.testing.assert_array_equal(encoded[name], listed[name], err_msg=name)
        np.testing.assert_array_equal(encoded[name], packed[name], err_msg=name)
    assert any(np.any((v != 0) & (v != np.round(v, 2))) for v in listed.values())  # not just round numbers


def test_default_is_every_layer_and_the_input_layer_is_the_input(client):
    prediction = predict_pixels(client, "edges", PIXELS[0])
    response = client.get(f"/activations/{prediction['id']}")
    body = response.json()
    assert body["model"] == "edges" and body["version"] == 1
    assert body["id"] == prediction["id"] and body["ids"] == [prediction["id"]]
    described = client.get("/models/edges").json()["layers"]
    assert [layer["name"] for layer in body["layers"]] == [layer["name"] for layer in described]
    for layer, info in zip(body["layers"], described, strict=True):
        assert layer["type"] == info["type"] and layer["shape"] == [1, *info["output_shape"][1:]]
    arrays = {layer["name"]: decode(layer) for layer in body["layers"]}
    np.testing.assert_array_equal(arrays["image"][0], PIXELS[0].astype(np.float32))  # raw, before Rescaling
    np.testing.assert_allclose(arrays["rescale"][0], PIXELS[0] / 255, atol=1e-6)


def test_layers_are_returned_in_the_order_asked_without_repeats(client):
    prediction = predict_pixels(client, "grey", PIXELS[0][:, :, 0])
    arrays = as_json(client, f"/activations/{prediction['id']}?layers=probabilities, conv1,probabilities")
    assert list(arrays) == ["probabilities", "conv1"]
    np.testing.assert_allclose(
        arrays["conv1"][0, :, :, 0], correlate2d(PIXELS[0][:, :, 0] / 255, np.full((3, 3), 1 / 9), "valid"), atol=1e-5
    )


def test_post_takes_json_pixel_arrays_and_names_the_images(client):
    response = client.post(
        "/models/edges/activations?layers=conv2", json={"instances": [p.tolist() for p in PIXELS[:2]]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] is None and len(body["ids"]) == 2
    assert decode(body["layers"][0]).shape == (2, 6, 6, 3)
    single = client.post("/models/edges/activations?layers=conv2", json={"instances": [PIXELS[0].tolist()]}).json()
    assert single["id"] == single["ids"][0]


# ---------------------------------------------------------------------------- errors


def test_unknown_id_is_404(client):
    message = error(client.get("/activations/0123456789abcdef"), 404, "prediction_not_found")
    assert "unknown or has expired" in message
    error(client.get("/activations/0123456789abcdef/gradcam"), 404, "prediction_not_found")


def test_unknown_layer_is_400_listing_the_valid_ones(client):
    prediction = predict_pixels(client, "grey", PIXELS[0][:, :, 0])
    message = error(client.get(f"/activations/{prediction['id']}?layers=conv1,conv9"), 400, "unknown_layer")
    assert "'conv9'" in message and "image, rescale, conv1, flatten, probabilities" in message
    error(client.post("/models/grey/activations?layers=nope", files={"file": ("a.png", grey_image(3))}), 400)


def test_bad_parameters_are_422(client):
    prediction = predict_pixels(client, "grey", PIXELS[0][:, :, 0])
    error(client.get(f"/activations/{prediction['id']}?format=csv"), 422, "invalid_input")
    error(client.get(f"/activations/{prediction['id']}?encoding=hex"), 422, "invalid_input")
    error(client.get(f"/activations/{prediction['id']}?format=png&layer=conv1&scale=0"), 422, "invalid_input")


def test_post_errors_are_those_of_predict(client):
    error(client.post("/models/nope/activations", files={"file": ("a.png", grey_image(3))}), 404, "model_not_found")
    error(client.post("/models/grey/activations", files={"file": ("a.png", b"not an image")}), 400, "invalid_image")
    files = [("file", (f"{i}.png", grey_image(i))) for i in range(5)]
    error(client.post("/models/grey/activations", files=files), 413, "too_many_images")


@pytest.fixture(scope="module")
def strict(models, tmp_path_factory):
    """An app that forgets inputs after 1 s and answers at most 2,000 bytes."""
    root = tmp_path_factory.mktemp("strict-store")
    models.write(root, "edges", 1)
    settings = settings_for(root, input_cache_ttl_seconds=1.0, max_activation_response_bytes=2000)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def test_expired_id_is_404(strict):
    prediction = predict_pixels(strict, "edges", PIXELS[0])
    assert strict.get(f"/activations/{prediction['id']}?layers=pool").status_code == 200
    time.sleep(1.1)
    message = error(strict.get(f"/activations/{prediction['id']}?layers=pool"), 404, "prediction_not_found")
    assert "expired" in message


def test_answers_over_the_byte_budget_are_413_with_a_hint(strict):
    prediction = predict_pixels(strict, "edges", PIXELS[0])
    url = f"/activations/{prediction['id']}"
    message = error(strict.get(url), 413, "response_too_large")  # every layer: ~4,000 bytes of base64
    assert "2,000 byte limit" in message and "layers=" in message and "npz" in message
    assert "layers=" in error(strict.get(url + "?format=npz"), 413, "response_too_large")
    # 216 values: about 1,500 bytes as base64, 2,500 as text (known only once encoded)
    assert strict.get(url + "?layers=conv2,relu2").status_code == 200
    error(strict.get(url + "?layers=conv2,relu2&encoding=list"), 413, "response_too_large")
    error(strict.get(url + "?format=png&layer=conv2&scale=16"), 413, "response_too_large")
    error(strict.get("/models/edges/layers/conv2/kernels?scale=16"), 413, "response_too_large")


# ---------------------------------------------------------------------------- png grids


def test_png_tiles_one_layers_channels(client):
    prediction = predict_pixels(client, "edges", PIXELS[1])
    url = f"/activations/{prediction['id']}"
    conv2 = as_json(client, url + "?layers=conv2")["conv2"][0]  # 6x6x3
    response = client.get(url + "?format=png&layer=conv2&scale=2")
    image = image_of(response, "L")
    assert image.size == (2 * 12 + 1, 2 * 12 + 1)  # 3 maps: 2 x 2 grid of 12 px tiles, 1 px gaps
    assert (response.headers["x-grid-rows"], response.headers["x-grid-columns"]) == ("2", "2")
    pixels = np.asarray(image)
    for channel, (top, left) in enumerate([(0, 0), (0, 13), (13, 0)]):
        tile = pixels[top : top + 12 : 2, left : left + 12 : 2]  # back to 6x6
        values = conv2[:, :, channel]
        expected = np.round(255 * (values - values.min()) / (values.max() - values.min()))
        np.testing.assert_allclose(tile, expected, atol=1)
    assert (pixels[13:, 13:] == 255).all()  # the unused fourth cell is blank
    assert (pixels[12, :] == 255).all() and (pixels[:, 12] == 255).all()  # gaps
    default = image_of(client.get(url + "?format=png&layer=conv2"), "L")
    assert default.size == (2 * 6 * 8 + 1, 2 * 6 * 8 + 1)  # default scale: tiles of 48 px


def test_png_needs_one_spatial_layer_and_one_image(client):
    prediction = predict_pixels(client, "edges", PIXELS[1])
    url = f"/activations/{prediction['id']}?format=png"
    assert "layer=" in error(client.get(url), 400, "bad_request")
    assert "conv1, conv2, relu2" in error(client.get(url + "&layer=pool"), 400, "unsuitable_layer")
    error(client.get(url + "&layer=nope"), 400, "unknown_layer")
    files = [("file", ("a.png", color_image((1, 2, 3)))), ("file", ("b.png", color_image((3, 2, 1))))]
    assert "one image" in error(client.post("/models/edges/activations?format=png&layer=conv1", files=files), 400)


# ---------------------------------------------------------------------------- kernels


def test_kernels_as_arrays(client, edges):
    kernel, bias = edges.get_layer("conv2").get_weights()
    for encoding in ("base64", "list"):
        response = client.get(f"/models/edges/layers/conv2/kernels?format=json&encoding={encoding}")
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["model"], body["version"], body["layer"], body["type"]) == ("edges", 1, "conv2", "Conv2D")
        np.testing.assert_array_equal(decode(body["kernel"]), kernel)
        np.testing.assert_array_equal(decode(body["bias"]), bias)
    grey = client.get("/models/grey/layers/conv1/kernels?format=json").json()
    np.testing.assert_allclose(decode(grey["kernel"]), np.full((3, 3, 1, 1), 1 / 9), atol=1e-7)


def test_kernels_as_a_grid(client):
    rgb = client.get("/models/edges/layers/conv1/kernels")  # png by default: 3 input channels -> RGB tiles
    assert image_of(rgb, "RGB").size == (2 * 48 + 1, 48)  # 2 filters of 3x3 at scale 16
    per_channel = client.get("/models/edges/layers/conv2/kernels?scale=1")  # 2 inputs: one row per filter
    assert image_of(per_channel, "L").size == (2 * 3 + 1, 3 * 3 + 2)
    assert (per_channel.headers["x-grid-rows"], per_channel.headers["x-grid-columns"]) == ("3", "2")
    assert image_of(client.get("/models/grey/layers/conv1/kernels"), "L").size == (48, 48)


def test_kernels_only_for_conv_layers(client):
    assert "conv1, conv2" in error(client.get("/models/edges/layers/pool/kernels"), 400, "unsuitable_layer")
    assert "none" in error(client.get("/models/colors/layers/pool/kernels"), 400, "unsuitable_layer")
    error(client.get("/models/edges/layers/nope/kernels"), 400, "unknown_layer")
    error(client.get("/models/nope/layers/conv1/kernels"), 404, "model_not_found")


# ---------------------------------------------------------------------------- Grad-CAM


def test_gradcam_matches_the_closed_form_over_a_layer_feeding_the_pool(client, edges):
    # relu2 -> global average -> Dense(softmax): the gradient of class c's logit is w[k, c] / (h * w)
    # everywhere, so Grad-CAM is ReLU(sum_k w[k, c] A_k) up to scale (the CAM of Zhou et al.).
    weights = edges.get_layer("probabilities").get_weights()[0]
    for pixels in PIXELS:
        prediction = predict_pixels(client, "edges", pixels)
        features = as_json(client, f"/activations/{prediction['id']}?layers=relu2")["relu2"][0]
        for label, c in (("left", 0), ("right", 1)):
            response = client.get(f"/activations/{prediction['id']}/gradcam?format=json&layer=relu2&class={label}")
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["layer"], body["label"], body["index"]) == ("relu2", label, c)
            assert body["probability"] == pytest.approx(prediction["probabilities"][label], abs=1e-6)
            cam = np.maximum(features @ weights[:, c], 0)
            heatmap = decode(body["heatmap"])
            assert heatmap.shape == (6, 6)
            if cam.max() == 0:
                assert body["peak"] == 0 and not heatmap.any()
                continue
            np.testing.assert_allclose(heatmap, cam / cam.max(), atol=1e-5)
            assert body["peak"] == pytest.approx(cam.max() / 36, rel=1e-4)


def test_gradcam_defaults_to_the_predicted_class_and_the_last_conv(client):
    prediction = predict_pixels(client, "edges", PIXELS[0])
    body = client.get(f"/activations/{prediction['id']}/gradcam?format=json&encoding=list").json()
    assert body["layer"] == "conv2" and body["label"] == prediction["label"]
    heatmap = decode(body["heatmap"])
    assert heatmap.shape == (6, 6) and heatmap.min() >= 0 and heatmap.max() <= 1


def test_gradcam_png_is_an_overlay_on_the_input(client):
    prediction = predict_pixels(client, "edges", PIXELS[0])
    response = client.get(f"/activations/{prediction['id']}/gradcam")
    assert image_of(response, "RGB").size == (128, 128)  # 8x8 input at the default scale: 224 px capped at x16
    assert response.headers["x-layer"] == "conv2"
    assert image_of(client.get(f"/activations/{prediction['id']}/gradcam?scale=2&class=right"), "RGB").size == (16, 16)


def test_gradcam_errors(client):
    prediction = predict_pixels(client, "edges", PIXELS[0])
    url = f"/activations/{prediction['id']}/gradcam"
    assert "left, right" in error(client.get(url + "?class=up"), 400, "bad_request")
    error(client.get(url + "?layer=pool"), 400, "unsuitable_layer")
    error(client.get(url + "?layer=image"), 400, "unsuitable_layer")
    error(client.get(url + "?layer=nope"), 400, "unknown_layer")
    colors = predict_pixels(client, "colors", PIXELS[0])
    message = error(client.get(f"/activations/{colors['id']}/gradcam"), 400, "unsuitable_layer")
    assert "no Conv2D" in message and "rescale" in message
    assert client.get(f"/activations/{colors['id']}/gradcam?layer=rescale&format=json").status_code == 200


# ---------------------------------------------------------------------------- OpenAPI


def test_routes_are_documented_with_their_media_types(client):
    paths = client.get("/openapi.json").json()["paths"]
    routes = {
        ("/activations/{id}", "get"): {"application/json", "application/x-npz", "image/png"},
        ("/models/{name}/activations", "post"): {"application/json", "application/x-npz", "image/png"},
        ("/models/{name}/layers/{layer}/kernels", "get"): {"application/json", "image/png"},
        ("/activations/{id}/gradcam", "get"): {"application/json", "image/png"},
    }
    for (path, method), media_types in routes.items():
        operation = paths[path][method]
        assert operation["description"] and "\n" not in operation["description"].strip()
        assert set(operation["responses"]["200"]["content"]) == media_types
        assert {"400", "404", "413"} <= set(operation["responses"])
    gradcam_parameters = {p["name"] for p in paths["/activations/{id}/gradcam"]["get"]["parameters"]}
    assert {"class", "layer", "format"} <= gradcam_parameters


def test_a_model_that_cannot_be_probed_still_predicts(store, monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("not a functional model")

    monkeypatch.setattr("service.activations.ActivationProbe", refuse)  # imported by the registry at load
    with TestClient(create_app(settings_for(store))) as client:
        wait_ready(client)
        prediction = predict_pixels(client, "grey", PIXELS[0][:, :, 0])
        error(client.get(f"/activations/{prediction['id']}"), 501, "activations_unavailable")


def test_activation_probes_are_warmed_just_after_their_version_is_ready(models, tmp_path):
    root = tmp_path / "models"
    for name in ("grey", "edges"):
        models.write(root, name, 1)
    with TestClient(create_app(settings_for(root))) as client:
        wait_ready(client)
        registry = client.app.state.registry
        wait_until(lambda: registry.warming == 0)
        for name in ("grey", "edges"):
            probe = registry.resolve(name).probe
            # the all-layer function, and Grad-CAM on the last convolution when there is one
            assert probe is not None and probe.compilations == 1 + bool(probe.convolutions), name
        assert registry.resolve("edges").probe.convolutions  # one of the two has a convolution
