"""The Open Inference Protocol (v2) REST API in-process: encodings, the same answers as /predict and
/activations, every kind of bad input as a 400 in the protocol's error body, and fuzzing.

The binary framing is built here by hand from the protocol's description (JSON header of
Inference-Header-Content-Length bytes, then the tensors), not with the service's codec.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import oip
from service.errors import InvalidInput, QueueFull, TooManyImages, UnsupportedFormat, render
from service.main import create_app
from tests.service.conftest import color_image, grey_image, settings_for, wait_ready

MAX_IMAGES = 4
RNG = np.random.default_rng(3)
EDGE_PIXELS = RNG.integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def client(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("oip-store")
    for name in ("grey", "colors", "edges"):
        models.write(root, name, 1)
    models.write(root, "grey", 2)
    with TestClient(create_app(settings_for(root, max_images_per_request=MAX_IMAGES))) as client:
        wait_ready(client)
        yield client


def framed(header: dict, *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + b"".join(chunks), {"Inference-Header-Content-Length": str(len(text))}


def length_prefixed(*elements: bytes) -> bytes:
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


def unframe(response) -> tuple[dict, dict[str, bytes]]:
    """A response's JSON header and each binary output's bytes, by name."""
    length = int(response.headers.get("inference-header-content-length", len(response.content)))
    header = json.loads(response.content[:length])
    rest, binary = response.content[length:], {}
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            binary[output["name"]], rest = rest[:size], rest[size:]
    assert rest == b""
    return header, binary


def infer(client, model: str, body: dict | bytes, headers: dict | None = None, status: int = 200):
    if isinstance(body, dict):
        body = json.dumps(body).encode()  # NaN as the literal Python's json (and many clients) write
    response = client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert response.status_code == status, response.text[:500]
    return response


def pixels_input(array: np.ndarray, datatype: str = "UINT8", nested: bool = False) -> dict:
    data = array.tolist() if nested else array.ravel().tolist()
    return {"name": "pixels", "datatype": datatype, "shape": list(array.shape), "data": data}


def outputs_of(response) -> dict[str, dict]:
    header, _ = unframe(response)
    return {output["name"]: output for output in header["outputs"]}


# ---------------------------------------------------------------------------- metadata and health


def test_server_and_model_metadata(client):
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "classification"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/grey/ready").json() == {"name": "grey", "ready": True}
    assert client.get("/v2/models/grey/versions/1/ready").status_code == 200
    meta = client.get("/v2/models/edges").json()
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [
        {"name": "pixels", "datatype": "UINT8", "shape": [-1, 8, 8, 3]},
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
    ]
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["probabilities"] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}
    assert outputs["label"]["datatype"] == "BYTES"
    assert outputs["conv1"]["shape"] == [-1, 6, 6, 2] and outputs["relu2"]["shape"] == [-1, 6, 6, 3]
    assert client.get("/v2/models/grey").json()["versions"] == ["1", "2"]
    assert client.get("/v2/models/grey/versions/1").json()["name"] == "grey"


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/grey/versions/7",
        "/v2/models/grey/versions/x/ready",
        "/v2/models/grey/versions/\u00b9/ready",  # a digit to str.isdigit, not to int() (found by schemathesis)
    ],
)
def test_unknown_model_or_version_is_404_in_the_protocol_body(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert set(response.json()) == {"error"} and isinstance(response.json()["error"], str)


def test_other_routes_keep_their_error_body(client):
    response = client.get("/models/nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert client.get("/v2/nothing/here").json() == {"error": "no route GET /v2/nothing/here"}


# ---------------------------------------------------------------------------- inference


def test_json_pixels_flat_and_nested_match_predict(client):
    pixels = EDGE_PIXELS
    expected = []
    for image in pixels:
        predicted = client.post("/models/edges/predict", json={"instances": [image.tolist()]}).json()
        expected.append([predicted["predictions"][0]["probabilities"][c] for c in ("left", "right")])
    for nested in (False, True):
        response = infer(client, "edges", {"id": "r1", "inputs": [pixels_input(pixels, nested=nested)]})
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["id"] == "r1" and body["model_name"] == "edges" and body["model_version"] == "1"
        outputs = outputs_of(response)
        assert outputs["probabilities"]["shape"] == [2, 2]
        np.testing.assert_allclose(np.reshape(outputs["probabilities"]["data"], (2, 2)), expected, rtol=1e-6)
        labels = ["left" if a > b else "right" for a, b in expected]
        assert outputs["label"]["data"] == labels


def test_binary_fp32_pixels_and_binary_outputs(client):
    pixels = np.stack([np.full((8, 8, 1), 250.0), np.full((8, 8, 1), 3.5)]).astype("<f4")
    header = {
        "inputs": [
            {"name": "pixels", "datatype": "FP32", "shape": [2, 8, 8, 1], "parameters": {"binary_data_size": 512}}
        ],
        "outputs": [{"name": "label", "parameters": {"binary_data": True}}, {"name": "probabilities"}],
        "parameters": {"binary_data_output": True},
    }
    response = infer(client, "grey", *framed(header, pixels.tobytes()))
    assert response.headers["content-type"] == "application/octet-stream"
    meta, binary = unframe(response)
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert binary["label"] == length_prefixed(b"bright", b"dark")
    probabilities = np.frombuffer(binary["probabilities"], "<f4").reshape(2, 2)
    assert probabilities.argmax(axis=1).tolist() == [1, 0]


def test_images_as_bytes_binary_and_base64_json(client):
    files = [color_image((0, 0, 255)), color_image((255, 0, 0)), color_image((0, 200, 0), fmt="JPEG")]
    header = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [3],
                "parameters": {"binary_data_size": len(length_prefixed(*files))},
            }
        ]
    }
    response = infer(client, "colors", *framed(header, length_prefixed(*files)))
    assert outputs_of(response)["label"]["data"] == ["blue", "red", "green"]
    encoded = [base64.b64encode(f).decode() for f in files]
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [3],
                "data": encoded,
                "parameters": {"content_type": "base64"},
            }
        ]
    }
    assert outputs_of(infer(client, "colors", body))["label"]["data"] == ["blue", "red", "green"]


def test_layer_outputs_equal_activations(client):
    files = [color_image((10, 200, 30)), color_image((250, 5, 90))]
    header = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": len(length_prefixed(*files))},
            }
        ],
        "outputs": [{"name": "relu2", "parameters": {"binary_data": True}}, {"name": "conv1"}],
    }
    meta, binary = unframe(infer(client, "edges", *framed(header, length_prefixed(*files))))
    relu2 = np.frombuffer(binary["relu2"], "<f4").reshape(meta["outputs"][0]["shape"])
    conv1 = np.asarray(meta["outputs"][1]["data"], np.float32).reshape(meta["outputs"][1]["shape"])
    assert relu2.shape == (2, 6, 6, 3) and conv1.shape == (2, 6, 6, 2)
    for index, file in enumerate(files):
        response = client.post(
            "/models/edges/activations",
            params={"layers": "conv1,relu2", "format": "npz"},
            files={"file": ("a.png", file)},
        )
        with np.load(__import__("io").BytesIO(response.content)) as arrays:
            np.testing.assert_array_equal(arrays["relu2"][0], relu2[index])
            np.testing.assert_array_equal(arrays["conv1"][0], conv1[index])


def test_classification_extension(client):
    pixels = np.stack([np.full((8, 8, 3), (200, 10, 60)), np.full((8, 8, 3), (0, 0, 90))]).astype(np.uint8)
    body = {
        "inputs": [pixels_input(pixels)],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
    }
    output = outputs_of(infer(client, "colors", body))["probabilities"]
    assert output["datatype"] == "BYTES" and output["shape"] == [2, 2]
    first = [item.split(":") for item in output["data"][:2]]
    assert [(i, label) for _, i, label in first] == [("0", "red"), ("2", "blue")]
    assert float(first[0][0]) > float(first[1][0]) > 0
    assert [item.split(":", 1)[1] for item in output["data"][2:]] == ["2:blue", "0:red"]  # ties: lower index first
    # k above the class count is capped at it
    body["outputs"][0]["parameters"]["classification"] = 9
    assert outputs_of(infer(client, "colors", body))["probabilities"]["shape"] == [2, 3]


def test_version_path_uses_that_version(client):
    body = {"inputs": [pixels_input(np.full((1, 8, 8, 1), 200, np.uint8))]}
    assert infer(client, "grey/versions/1", body).json()["model_version"] == "1"
    assert infer(client, "grey", body).json()["model_version"] == "2"


# ---------------------------------------------------------------------------- bad input

GREY = {"name": "pixels", "datatype": "UINT8", "shape": [1, 8, 8, 1], "data": [0] * 64}
_BAD = [
    ({"inputs": []}, "exactly one input"),
    ({"inputs": [GREY, GREY]}, "exactly one input"),
    ({}, '"inputs" list'),
    ({"inputs": [{**GREY, "name": "img"}]}, "unknown input"),
    ({"inputs": [{**GREY, "datatype": "INT64"}]}, "datatype"),
    ({"inputs": [{**GREY, "datatype": "BYTES"}]}, "datatype"),
    ({"inputs": [{**GREY, "shape": [1, 8, 8, 3]}]}, "shape"),
    ({"inputs": [{**GREY, "shape": [1, 64]}]}, "shape"),
    ({"inputs": [{**GREY, "shape": [0, 8, 8, 1]}]}, "shape"),
    ({"inputs": [{**GREY, "data": [0] * 63}]}, "needs 64 values"),
    ({"inputs": [{**GREY, "data": [256] * 64}]}, "[0, 255]"),
    ({"inputs": [{**GREY, "data": [0.5] * 64}]}, "integers"),
    ({"inputs": [{**GREY, "data": ["a"] * 64}]}, "integers"),
    ({"inputs": [{**GREY, "data": [[0] * 8] * 7 + [[0] * 7]}]}, "ragged"),
    ({"inputs": [{**GREY, "datatype": "FP32", "data": [300.0] * 64}]}, "[0, 255]"),
    ({"inputs": [{**GREY, "datatype": "FP32", "data": [float("nan")] * 64}]}, "NaN"),
    ({"inputs": [GREY], "outputs": [{"name": "logits"}]}, "unknown output 'logits'"),
    ({"inputs": [GREY], "outputs": [{"name": "label"}, {"name": "label"}]}, "twice"),
    ({"inputs": [GREY], "outputs": [{"name": "label", "parameters": {"classification": 2}}]}, "classification"),
    ({"inputs": [GREY], "outputs": [{"name": "probabilities", "parameters": {"classification": 0}}]}, "positive"),
    ({"inputs": [GREY], "parameters": {"binary_data_output": "yes"}}, "true or false"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not an image"]}]}, "not an image"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}, "needs 2 elements"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [7]}]}, "must be a string"),
    (
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": ["%%"],
                    "parameters": {"content_type": "base64"},
                }
            ]
        },
        "not valid base64",
    ),
    ({"inputs": [{**GREY, "parameters": {"binary_data_size": 64}}]}, "both data and binary_data_size"),
]


@pytest.mark.parametrize(("body", "message"), _BAD)
def test_bad_json_requests_are_400_saying_what_is_wrong(client, body, message):
    response = infer(client, "grey", body, status=400)
    assert set(response.json()) == {"error"}
    assert message in response.json()["error"]


def _binary_grey(size: int = 64, declared: int | None = None) -> tuple[dict, bytes]:
    header = {
        "inputs": [
            {**{k: v for k, v in GREY.items() if k != "data"}, "parameters": {"binary_data_size": declared or size}}
        ]
    }
    return header, bytes(size)


@pytest.mark.parametrize(
    ("length", "message"),
    [("99999", "larger"), ("-3", "negative"), ("abc", "whole number"), ("", "whole number"), ("1e3", "whole number")],
)
def test_bad_header_length_is_400(client, length, message):
    header, data = _binary_grey()
    body, _ = framed(header, data)
    response = infer(client, "grey", body, {"Inference-Header-Content-Length": length}, status=400)
    text = response.json()["error"]
    assert "Inference-Header-Content-Length" in text and (message in text or message == "larger" and "only" in text)


@pytest.mark.parametrize(
    ("size", "declared", "message"),
    [(63, 63, "needs 64 bytes"), (64, 65, "binary_data_size is 65 but 64 bytes follow"), (65, 64, "but 65 bytes")],
)
def test_binary_data_size_must_match(client, size, declared, message):
    header, data = _binary_grey(size, declared)
    response = infer(client, "grey", *framed(header, data), status=400)
    assert message in response.json()["error"]


def test_binary_bytes_elements_framing(client):
    files = length_prefixed(grey_image(9))
    for data, message in [
        (files[:-1], "only"),
        (files + b"\0", "left over"),
        (files[:2], "length prefix"),
        (length_prefixed(b"garbage"), "not an image"),
    ]:
        header = {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(data)}}
            ]
        }
        response = infer(client, "grey", *framed(header, data), status=400)
        assert message in response.json()["error"]


def test_binary_body_without_the_header_length_is_400(client):
    header, data = _binary_grey()
    body, _ = framed(header, data)
    response = infer(client, "grey", body, status=400)
    assert "Inference-Header-Content-Length" in response.json()["error"]


def test_too_many_images_count_against_the_limit(client):
    pixels = np.zeros((MAX_IMAGES + 1, 8, 8, 1), np.uint8)
    response = infer(client, "grey", {"inputs": [pixels_input(pixels)]}, status=413)
    assert response.json() == {"error": f"{MAX_IMAGES + 1} images; at most {MAX_IMAGES} per request"}


def test_api_key_guards_v2_but_not_its_liveness(models, tmp_path):
    root = tmp_path / "store"
    models.write(root, "grey", 1)
    with TestClient(create_app(settings_for(root, api_key="k3y"))) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code in (200, 503)  # probes send no key
        response = client.get("/v2/models/grey")
        assert response.status_code == 401 and response.json() == {"error": "missing X-API-Key header"}
        response = client.post("/v2/models/grey/infer", json={"inputs": [GREY]}, headers={"X-API-Key": "k3y"})
        assert response.status_code in (200, 503)  # 503 while the version still loads


# ---------------------------------------------------------------------------- codec


def test_encode_response_binary_bytes_and_json():
    tensors = [
        oip.OutputTensor("label", "BYTES", (2,), [b"a", b"bc"], True),
        oip.OutputTensor("probabilities", "FP32", (1, 2), np.array([[0.25, 0.75]], np.float32), False),
    ]
    body, length = oip.encode_response("m", 3, None, tensors)
    header = json.loads(body[:length])
    assert header["outputs"][0] == {
        "name": "label",
        "datatype": "BYTES",
        "shape": [2],
        "parameters": {"binary_data_size": 11},
    }
    assert header["outputs"][1]["data"] == [0.25, 0.75] and header["model_version"] == "3"
    assert body[length:] == b"\x01\x00\x00\x00a\x02\x00\x00\x00bc"


# ---------------------------------------------------------------------------- fuzzing


def _assert_refused_cleanly(response) -> None:
    assert response.status_code < 500, response.text[:300]
    if response.status_code != 200:
        assert set(response.json()) == {"error"}


_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(
    name=st.sampled_from(["pixels", "image"]),
    datatype=st.sampled_from(["UINT8", "FP32", "BYTES", "INT8"]),
    shape=st.lists(st.integers(-2, 9), max_size=5),
    declared=st.one_of(st.none(), st.integers(-5, 600), st.text(max_size=3)),
    length_delta=st.one_of(st.none(), st.integers(-40, 40), st.just("x")),
    tail=st.binary(max_size=600),
)
def test_fuzz_binary_framing(client, name, datatype, shape, declared, length_delta, tail):
    parameters = {} if declared is None else {"binary_data_size": declared}
    header = {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "parameters": parameters}]}
    body, headers = framed(header, tail)
    if length_delta == "x":
        headers = {"Inference-Header-Content-Length": "x"}
    elif length_delta is not None:
        headers = {
            "Inference-Header-Content-Length": str(int(headers["Inference-Header-Content-Length"]) + length_delta)
        }
    _assert_refused_cleanly(client.post("/v2/models/grey/infer", content=body, headers=headers))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-300, 300) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["pixels", "image", "x"]),
        "datatype": st.sampled_from(["UINT8", "FP32", "BYTES"]),
        "shape": st.one_of(st.just([1, 8, 8, 1]), st.lists(st.integers(-1, 8), max_size=4), _json_values),
        "data": st.one_of(st.just([0] * 64), st.lists(st.integers(-1, 256), max_size=70), _json_values),
    },
    optional={"parameters": st.dictionaries(st.sampled_from(["binary_data_size", "content_type", "x"]), _json_values)},
)


@_FUZZ
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "inputs": st.one_of(st.lists(_tensor, max_size=2), _json_values),
            "outputs": st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {"name": st.sampled_from(["label", "probabilities", "conv1", "nope"])},
                        optional={
                            "parameters": st.dictionaries(
                                st.sampled_from(["binary_data", "classification"]), _json_values
                            )
                        },
                    ),
                    max_size=3,
                ),
                _json_values,
            ),
            "parameters": _json_values,
            "id": _json_values,
        },
    )
)
def test_fuzz_json_requests(client, body):
    _assert_refused_cleanly(client.post("/v2/models/grey/infer", content=json.dumps(body)))


# ---------------------------------------------------------------------------- the one error handler


def test_error_body_and_status_are_decided_by_path():
    full = render(QueueFull("queue full (9 images waiting); retry in 2s", 2), "/v2/models/grey/infer")
    assert full.status_code == 503 and full.headers["retry-after"] == "2"
    assert json.loads(full.body) == {"error": "queue full (9 images waiting); retry in 2s"}
    # this API's 415 and 422 are the protocol's 400; 413 stays
    assert render(UnsupportedFormat("PDF"), "/v2/models/grey/infer").status_code == 400
    assert render(InvalidInput("bad"), "/v2").status_code == 400
    assert render(TooManyImages("many"), "/v2/models/grey/infer").status_code == 413
    other = render(InvalidInput("bad"), "/predict")
    assert other.status_code == 422 and json.loads(other.body) == {"error": {"code": "invalid_input", "message": "bad"}}
    assert render(InvalidInput("bad"), "/v2x").status_code == 422  # only /v2 and below


def test_layer_outputs_are_held_to_the_response_budget(models, tmp_path):
    root = tmp_path / "store"
    models.write(root, "edges", 1)
    # conv1 of 4 images: 288 float32s, 1.2 kB binary, about 5 kB as JSON text
    with TestClient(create_app(settings_for(root, max_activation_response_bytes=3000))) as client:
        wait_ready(client)
        pixels = pixels_input(np.zeros((4, 8, 8, 3), np.uint8))
        binary = {"inputs": [pixels], "outputs": [{"name": "conv1", "parameters": {"binary_data": True}}]}
        assert infer(client, "edges", binary).status_code == 200
        response = infer(client, "edges", {"inputs": [pixels], "outputs": [{"name": "conv1"}]}, status=413)
        assert "byte limit" in response.json()["error"]
        eight = pixels_input(np.zeros((8, 8, 8, 3), np.uint8))
        both = [{"name": "relu2", "parameters": {"binary_data": True}}, {"name": "conv1"}]
        response = infer(client, "edges", {"inputs": [eight], "outputs": both}, status=413)
        assert "bytes or more" in response.json()["error"]  # refused before the model runs
