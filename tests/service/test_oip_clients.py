"""The v2 protocol against a real `python -m service`, driven by the protocol's own clients,
unchanged: Triton's `tritonclient.http` and KServe's `InferenceRESTClient`.

Expected answers come from this service's own API on the same server (`/predict`,
`/activations`), and from what the tiny models are built to answer (conftest).
"""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.live_server import serve
from tests.service.conftest import color_image

pytestmark = pytest.mark.slow

RNG = np.random.default_rng(7)
EDGE_PIXELS = RNG.integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
COLOURS = {"red": (230, 10, 20), "green": (5, 240, 30), "blue": (0, 20, 250)}


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("oip-live-store")
    for name in ("colors", "edges"):
        models.write(root, name, 1)
    with serve(root, root.parent / "oip-server.log", MAX_IMAGES_PER_REQUEST="8") as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield client
    client.close()


def predicted(server, model: str, pixels: np.ndarray) -> np.ndarray:
    """Probabilities from this service's own /predict, in class order."""
    response = httpx.post(f"{server.url}/models/{model}/predict", json={"instances": pixels.tolist()}, timeout=30)
    assert response.status_code == 200, response.text
    return np.array([list(p["probabilities"].values()) for p in response.json()["predictions"]], np.float32)


def activations(server, model: str, files: list[bytes], layers: str) -> dict[str, np.ndarray]:
    response = httpx.post(
        f"{server.url}/models/{model}/activations",
        params={"layers": layers, "format": "npz"},
        files=[("file", (f"{i}.png", f)) for i, f in enumerate(files)],
        timeout=30,
    )
    assert response.status_code == 200, response.text
    with np.load(io.BytesIO(response.content)) as arrays:
        return {name: arrays[name] for name in arrays.files}


def text(values: np.ndarray) -> list[str]:
    """BYTES elements as text: binary outputs arrive as bytes, JSON ones as str."""
    return [v.decode() if isinstance(v, bytes) else v for v in np.asarray(values).ravel()]


# ---------------------------------------------------------------------------- tritonclient


def test_triton_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("edges") and client.is_model_ready("edges", "1")
    assert not client.is_model_ready("edges", "2")
    server = client.get_server_metadata()
    assert server["name"] == "keras-serve" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("edges")
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("pixels", "UINT8", [-1, 8, 8, 3]),
        ("image", "BYTES", [-1]),
    ]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert outputs["probabilities"] == ("FP32", [-1, 2]) and outputs["label"] == ("BYTES", [-1])
    assert outputs["conv1"] == ("FP32", [-1, 6, 6, 2])
    assert client.get_model_metadata("edges", "1")["versions"] == ["1"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_triton_pixels(server, client, binary):
    tensor = triton.InferInput("pixels", list(EDGE_PIXELS.shape), "UINT8")
    tensor.set_data_from_numpy(EDGE_PIXELS, binary_data=binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label")]
    result = client.infer("edges", [tensor], outputs=outputs, request_id="req-7")
    expected = predicted(server, "edges", EDGE_PIXELS)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-6, atol=1e-7)
    labels = [["left", "right"][i] for i in expected.argmax(axis=1)]
    assert text(result.as_numpy("label")) == labels
    assert result.get_response()["id"] == "req-7"


def test_triton_fp32_pixels_and_default_outputs(client):
    pixels = np.stack([np.full((8, 8, 3), COLOURS[c], np.float32) for c in ("blue", "green")])
    tensor = triton.InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    result = client.infer("colors", [tensor])  # no outputs named: all of them
    assert text(result.as_numpy("label")) == ["blue", "green"]
    assert result.as_numpy("probabilities").shape == (2, 3)


def test_triton_images_as_bytes(client):
    names = ["green", "red", "blue", "red"]
    files = [color_image(COLOURS[n], size=(20, 14)) for n in names]  # resized to 8x8 as /predict does
    tensor = triton.InferInput("image", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=np.object_))
    result = client.infer("colors", [tensor], outputs=[triton.InferRequestedOutput("label")])
    assert text(result.as_numpy("label")) == names


def test_triton_layer_outputs_equal_activations(server, client):
    files = [color_image((40, 90, 200)), color_image((250, 250, 0))]
    tensor = triton.InferInput("image", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=np.object_))
    requested = [triton.InferRequestedOutput("conv1"), triton.InferRequestedOutput("relu2", binary_data=False)]
    result = client.infer("edges", [tensor], outputs=requested)
    expected = activations(server, "edges", files, "conv1,relu2")
    np.testing.assert_array_equal(result.as_numpy("conv1"), expected["conv1"])
    np.testing.assert_array_equal(result.as_numpy("relu2"), expected["relu2"])


def test_triton_classification(client):
    pixels = np.stack([np.full((8, 8, 3), COLOURS[c], np.uint8) for c in ("red", "blue")])
    tensor = triton.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = client.infer("colors", [tensor], outputs=[triton.InferRequestedOutput("probabilities", class_count=2)])
    top = result.as_numpy("probabilities")
    assert top.shape == (2, 2)
    parsed = [[item.decode().split(":") for item in row] for row in top]
    assert [row[0][1:] for row in parsed] == [["0", "red"], ["2", "blue"]]
    assert all(float(row[0][0]) >= float(row[1][0]) for row in parsed)


def test_triton_errors_are_its_own_exceptions(client):
    tensor = triton.InferInput("pixels", [1, 8, 8, 1], "UINT8")  # colors takes 3 channels
    tensor.set_data_from_numpy(np.zeros((1, 8, 8, 1), np.uint8))
    with pytest.raises(InferenceServerException) as error:
        client.infer("colors", [tensor])
    assert error.value.status() == "400" and "shape" in error.value.message()
    tensor = triton.InferInput("pixels", [1, 8, 8, 3], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(InferenceServerException) as error:
        client.infer("colors", [tensor], outputs=[triton.InferRequestedOutput("logits")])
    assert error.value.status() == "400" and "unknown output 'logits'" in error.value.message()
    with pytest.raises(InferenceServerException) as error:
        client.infer("nope", [tensor])
    assert error.value.status() == "404"
    with pytest.raises(InferenceServerException) as error:
        client.get_model_metadata("colors", "9")
    assert error.value.status() == "404"
    bad = triton.InferInput("image", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as error:
        client.infer("colors", [bad])
    assert error.value.status() == "400"
    assert client.is_server_live()


# ---------------------------------------------------------------------------- KServe


def test_kserve_rest_client(server):
    kserve = pytest.importorskip("kserve", reason="kserve is not installed (see pyproject's dev extras)")
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

    async def main():
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=30))
        try:
            assert await client.is_server_live(server.url)
            assert await client.is_server_ready(server.url)
            assert await client.is_model_ready(server.url, "edges")
            results = []
            for binary in (True, False):
                tensor = InferInput("pixels", list(EDGE_PIXELS.shape), "UINT8")
                tensor.set_data_from_numpy(EDGE_PIXELS, binary_data=binary)
                request = InferRequest("edges", [tensor], request_outputs=[RequestedOutput("probabilities")])
                response = await client.infer(server.url, request, model_name="edges")
                results.append(response.outputs[0].as_numpy())
            files = [color_image(COLOURS["blue"]), color_image(COLOURS["red"])]
            tensor = InferInput("image", [2], "BYTES")
            tensor.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=True)
            outputs = [RequestedOutput("label"), RequestedOutput("pool", {"binary_data": True})]
            response = await client.infer(
                server.url, InferRequest("colors", [tensor], request_outputs=outputs), "colors"
            )
            named = {output.name: output.as_numpy() for output in response.outputs}
            errors = []
            for model, tensor in (
                ("colors", InferInput("pixels", [1, 8, 8, 1], "UINT8", [0] * 64)),
                ("nope", InferInput("pixels", [1, 8, 8, 3], "UINT8", [0] * 192)),
            ):
                with pytest.raises(httpx.HTTPStatusError) as error:
                    await client.infer(server.url, InferRequest(model, [tensor]), model_name=model)
                errors.append(error.value.response.status_code)
            return results, named, errors
        finally:
            await client.close()

    results, named, errors = asyncio.run(main())
    expected = predicted(server, "edges", EDGE_PIXELS)
    for probabilities in results:
        np.testing.assert_allclose(probabilities, expected, rtol=1e-6, atol=1e-7)
    assert text(named["label"]) == ["blue", "red"]
    files = [color_image(COLOURS["blue"]), color_image(COLOURS["red"])]
    np.testing.assert_array_equal(named["pool"], activations(server, "colors", files, "pool")["pool"])
    assert errors == [400, 404]
