"""The HTTP API on good input, through the app's lifespan (TestClient)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.main import create_app
from tests.service.conftest import color_image, grey_image, png, settings_for, wait_ready


@pytest.fixture(scope="module")
def client(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    models.write(root, "grey", 1)
    models.write(root, "colors", 1)
    with TestClient(create_app(settings_for(root, max_images_per_request=4))) as client:
        wait_ready(client)
        yield client


def labels(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [p["label"] for p in response.json()["predictions"]]


def test_live_and_ready(client):
    assert client.get("/health/live").json() == {"status": "alive"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["models"]["grey"] == {
        "state": "ready",
        "default_version": 1,
        "versions": [{"version": 1, "state": "ready", "reason": None, "keras_loaded": True}],
    }


def test_models_lists_states_classes_and_input(client):
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert set(models) == {"grey", "colors"}
    assert models["colors"]["class_names"] == ["red", "green", "blue"]
    assert models["grey"]["input"]["color_mode"] == "grayscale"
    assert models["grey"]["state"] == "ready" and models["grey"]["default_version"] == 1


def test_model_detail_has_card_and_layers(client):
    body = client.get("/models/grey").json()
    assert body["name"] == "grey" and body["version"] == 1 and body["state"] == "ready"
    assert body["card"]["class_names"] == ["dark", "bright"]
    assert len(body["card"]["sha256"]) == 64
    layers = {layer["name"]: layer for layer in body["layers"]}
    assert list(layers) == ["image", "rescale", "conv1", "flatten", "probabilities"]
    assert layers["conv1"] == {"name": "conv1", "type": "Conv2D", "output_shape": [None, 6, 6, 1], "parameters": 10}
    assert layers["probabilities"]["output_shape"] == [None, 2]


def test_multipart_batch_keeps_request_order(client):
    files = [("file", (f"{i}.png", color_image(rgb))) for i, rgb in enumerate([(250, 0, 0), (0, 250, 0), (0, 0, 250)])]
    files.append(("file", ("3.png", color_image((200, 10, 10)))))
    response = client.post("/models/colors/predict", files=files)
    assert labels(response) == ["red", "green", "blue", "red"]
    body = response.json()
    assert body["model"] == "colors" and body["version"] == 1
    first = body["predictions"][0]
    assert first["index"] == 0
    assert set(first["probabilities"]) == {"red", "green", "blue"}
    assert sum(first["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert first["confidence"] == first["probabilities"]["red"] > 0.9
    assert [t["label"] for t in first["top_k"]] == ["red", "green", "blue"][:3]  # ties keep class order


def test_predictions_follow_the_pixels(client):
    for value, expected in [(0, "dark"), (100, "dark"), (160, "bright"), (255, "bright")]:
        assert labels(client.post("/models/grey/predict", files={"file": ("x.png", grey_image(value))})) == [expected]


def test_json_base64_instances_and_data_urls(client):
    green = base64.b64encode(color_image((0, 255, 0))).decode()
    blue = "data:image/png;base64," + base64.b64encode(color_image((0, 0, 255))).decode()
    response = client.post("/models/colors/predict", json={"instances": [{"b64": green}, {"b64": blue}]})
    assert labels(response) == ["green", "blue"]


def test_json_pixel_arrays_in_the_models_shape(client):
    blue = np.zeros((8, 8, 3)).tolist()
    for row in blue:
        for pixel in row:
            pixel[2] = 255.0
    assert labels(client.post("/models/colors/predict", json={"instances": [blue]})) == ["blue"]
    bright_hw = np.full((8, 8), 250).tolist()
    dark_hwc = np.full((8, 8, 1), 5).tolist()
    assert labels(client.post("/models/grey/predict", json={"instances": [bright_hw, dark_hwc]})) == ["bright", "dark"]


def test_predict_route_takes_the_model_from_query_form_or_json(client):
    image = color_image((255, 0, 0))
    assert labels(client.post("/predict?model=colors", files={"file": ("a.png", image)})) == ["red"]
    assert labels(client.post("/predict", data={"model": "colors"}, files={"file": ("a.png", image)})) == ["red"]
    b64 = base64.b64encode(image).decode()
    assert labels(client.post("/predict", json={"model": "colors", "instances": [{"b64": b64}]})) == ["red"]


def test_top_k_from_query_form_or_json(client):
    image = color_image((255, 0, 0))
    response = client.post("/models/colors/predict?top_k=1", files={"file": ("a.png", image)})
    assert [t["label"] for t in response.json()["predictions"][0]["top_k"]] == ["red"]
    response = client.post("/models/colors/predict", data={"top_k": "2"}, files={"file": ("a.png", image)})
    assert len(response.json()["predictions"][0]["top_k"]) == 2
    b64 = base64.b64encode(image).decode()
    response = client.post("/models/colors/predict", json={"instances": [{"b64": b64}], "top_k": 50})
    assert len(response.json()["predictions"][0]["top_k"]) == 3  # capped at the class count


def test_explicit_version_serves_the_older_weights(models, tmp_path):
    """grey v1 calls a 70%-white image bright; v2 (the default, other weights) calls it dark."""
    root = tmp_path / "models"
    models.write(root, "grey", 1)
    models.write(root, "grey", 2, kind="grey-strict")
    image = {"file": ("a.png", grey_image(180))}
    with TestClient(create_app(settings_for(root))) as client:
        wait_ready(client)
        default = client.post("/models/grey/predict", files=image)
        older = client.post("/models/grey/predict?version=1", files=image)
        older_by_query = client.post("/predict?model=grey&version=1", files=image)
        newer = client.post("/models/grey/predict?version=2", files=image)
    assert labels(default) == labels(newer) == ["dark"]
    assert labels(older) == labels(older_by_query) == ["bright"]
    assert [r.json()["version"] for r in (default, older, older_by_query, newer)] == [2, 1, 1, 2]
    assert older.json()["predictions"][0]["probabilities"]["bright"] > 0.99


@pytest.mark.parametrize("fmt", ["JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM"])
def test_common_formats(client, fmt):
    image = color_image((0, 0, 255), size=(20, 10), fmt=fmt)
    assert labels(client.post("/models/colors/predict", files={"file": (f"a.{fmt.lower()}", image)})) == ["blue"]


def test_images_are_preprocessed_like_training(client):
    # transparent black flattens to white; palette images convert; a large image is resized
    clear_black = png(np.zeros((8, 8, 4), np.uint8), "RGBA")
    palette = Image.new("P", (30, 30), 0)
    palette.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    buffer = io.BytesIO()
    palette.save(buffer, "PNG")
    large = color_image((0, 255, 0), size=(600, 400), fmt="JPEG")  # decoded on a worker thread
    assert labels(client.post("/models/grey/predict", files={"file": ("a.png", clear_black)})) == ["bright"]
    assert labels(client.post("/models/colors/predict", files={"file": ("p.png", buffer.getvalue())})) == ["blue"]
    assert labels(client.post("/models/colors/predict", files={"file": ("l.jpg", large)})) == ["green"]


def test_each_prediction_has_an_id_whose_input_is_kept(client):
    response = client.post(
        "/models/grey/predict", files=[("file", ("a.png", grey_image(10))), ("file", ("b.png", grey_image(200)))]
    )
    ids = [p["id"] for p in response.json()["predictions"]]
    assert len(set(ids)) == 2
    cache = client.app.state.input_cache
    kept = [cache.get(i) for i in ids]
    assert [(k.model, k.version) for k in kept] == [("grey", 1), ("grey", 1)]
    assert kept[0].array.shape == (8, 8, 1) and int(kept[0].array.max()) == 10
    assert int(kept[1].array.min()) == 200


def test_metrics_count_requests_batches_and_states(client):
    client.post("/models/grey/predict", files={"file": ("a.png", grey_image(0))})
    text = client.get("/metrics").text
    assert 'http_requests_total{method="POST",route="/models/{name}/predict",status="200"}' in text
    assert 'batch_size_count{model="grey",version="1"}' in text
    assert 'model_state{model="grey",state="ready",version="1"} 1.0' in text
    assert 'prediction_duration_seconds_bucket{le="0.001",model="grey"}' in text
    assert 'queue_depth{model="grey",version="1"} 0.0' in text


def test_openapi_documents_every_route_and_the_request_bodies(client):
    schema = client.get("/openapi.json").json()
    operations = [op for path in schema["paths"].values() for op in path.values()]
    assert len(operations) >= 7
    for operation in operations:
        assert operation.get("description"), operation["operationId"]
    body = schema["paths"]["/models/{name}/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert body["application/json"]["examples"]["base64"]["value"]["instances"][0]["b64"]
    assert "/predict" in schema["paths"]
