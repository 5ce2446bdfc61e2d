"""The pure parts of the activations API, without HTTP: the probe and the renderers."""

from __future__ import annotations

import base64
import io
import json

import keras
import numpy as np
import pytest
from PIL import Image

from service import rendering
from service.activations import COMPILE_AFTER, ActivationProbe
from service.errors import UnknownLayer, UnsuitableLayer
from tests.service.conftest import RGB_SPEC, build_edges_model

IMAGES = np.random.default_rng(3).uniform(0, 255, (5, *RGB_SPEC.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def edges() -> keras.Model:
    return build_edges_model()


def test_probe_matches_the_model_and_chunks_big_batches(edges):
    probe = ActivationProbe(edges, RGB_SPEC, max_batch_size=2, cache_size=4)
    arrays = probe(IMAGES, probe.names)
    assert list(arrays) == ["image", "rescale", "conv1", "conv2", "relu2", "pool", "probabilities"]
    np.testing.assert_allclose(arrays["probabilities"], keras.ops.convert_to_numpy(edges(IMAGES)), atol=1e-6)
    np.testing.assert_array_equal(arrays["image"], IMAGES)
    for i in range(len(IMAGES)):
        alone = probe(IMAGES[i : i + 1], ["conv2", "pool"])
        np.testing.assert_allclose(alone["conv2"], arrays["conv2"][i : i + 1], atol=1e-6)
        np.testing.assert_allclose(alone["pool"], arrays["pool"][i : i + 1], atol=1e-6)


def test_layer_sets_are_sliced_until_popular_and_compilations_are_bounded(edges):
    probe = ActivationProbe(edges, RGB_SPEC, max_batch_size=4, cache_size=2)
    assert probe.compilations == 1
    for _ in range(COMPILE_AFTER - 1):  # a new set is served from the all-layer function, sliced
        assert probe._function_for(("conv1", "pool"))[1] is probe._all_function
    first = probe._function_for(("pool", "conv1"))  # order does not matter: the same set, now popular
    assert first[0] == ("conv1", "pool") and first[1] is not probe._all_function
    assert probe._function_for(("conv1", "pool"))[1] is first[1] and probe.compilations == 2
    for names in [("conv2",), ("relu2",), ("rescale",), ("conv1",)] * 3:  # a client cycling sets
        probe(IMAGES[:1], list(names))
    assert probe.compilations == 3 and len(probe._functions) == 2  # cache_size bounds the compilations
    assert probe._function_for(("relu2",))[1] is probe._all_function
    assert probe._function_for(tuple(probe._index))[1] is probe._all_function  # every layer: never cached
    unbounded = ActivationProbe(edges, RGB_SPEC, max_batch_size=4, cache_size=0)
    for _ in range(COMPILE_AFTER + 1):
        assert unbounded._function_for(("conv1",))[1] is unbounded._all_function
    sliced = unbounded(IMAGES[:2], ["conv1", "pool"])
    assert list(sliced) == ["conv1", "pool"]
    np.testing.assert_allclose(sliced["conv1"], probe(IMAGES[:2], ["conv1"])["conv1"], atol=1e-6)


def test_gradcam_compiles_at_most_two_functions(edges):
    probe = ActivationProbe(edges, RGB_SPEC, max_batch_size=4, cache_size=2)
    probe.warm()
    assert probe.compilations == 2  # all layers + Grad-CAM on the last convolution, at load
    default = probe.gradcam(IMAGES[0], class_index=1)
    assert probe.compilations == 2
    other = {name: probe.gradcam(IMAGES[0], name, 1) for name in ("conv1", "relu2", "conv2")}
    assert probe.compilations == 3  # every other layer shares one function
    np.testing.assert_allclose(other["conv2"].heatmap, default.heatmap, atol=1e-5)
    assert other["conv1"].heatmap.shape == edges.get_layer("conv1").output.shape[1:3]


def test_no_keras_model_is_built_after_the_probe(edges, monkeypatch):
    probe = ActivationProbe(edges, RGB_SPEC, max_batch_size=4, cache_size=2)
    built = []

    class Counting(keras.Model):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(keras, "Model", Counting)
    for names in (["conv1"], ["conv2", "probabilities"], probe.names, ["image"]):
        probe(IMAGES[:2], names)
    probe.gradcam(IMAGES[0])
    probe.gradcam(IMAGES[0], "relu2", 1)
    assert built == []


def test_probe_checks_layer_names(edges):
    probe = ActivationProbe(edges, RGB_SPEC, max_batch_size=4, cache_size=2)
    assert probe.select(None) == probe.names
    assert probe.select(["pool", "conv1", "pool"]) == ["pool", "conv1"]
    with pytest.raises(UnknownLayer, match="image, rescale, conv1"):
        probe.select(["conv1", "conv7"])
    with pytest.raises(UnsuitableLayer, match="not a Conv2D"):
        probe.kernels("relu2")
    assert probe.convolutions == ["conv1", "conv2"] and probe.default_gradcam_layer() == "conv2"


def test_exact_floats_read_back_as_the_same_float32():
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.standard_normal(2000).astype(np.float32),
            (rng.standard_normal(500) * 1e-30).astype(np.float32),
            (rng.standard_normal(500) * 1e30).astype(np.float32),
            np.array([0.0, -0.0, 0.1, 1 / 3, 1e-45, 3.4e38, 123456789.0], np.float32),
        ]
    )
    text = json.dumps(rendering.exact_floats(values).tolist())
    np.testing.assert_array_equal(np.asarray(json.loads(text), np.float32), values)
    assert json.dumps(rendering.exact_floats(np.array([0.1, 0.5, 0], np.float32)).tolist()) == "[0.1, 0.5, 0.0]"


def test_array_entry_base64_is_little_endian_c_order():
    array = np.arange(6, dtype=">f4").reshape(2, 3)  # big-endian in, little-endian out
    entry = json.loads(rendering.array_entry(array, "base64", name="x"))
    assert entry["name"] == "x" and entry["shape"] == [2, 3] and entry["dtype"] == "float32"
    assert base64.b64decode(entry["data"]) == np.arange(6, dtype="<f4").tobytes()
    assert json.loads(rendering.array_entry(array, "list"))["data"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_grid_layout():
    assert [rendering.grid_shape(n) for n in (1, 2, 3, 5, 10, 32, 64)] == [
        (1, 1),
        (1, 2),
        (2, 2),
        (2, 3),
        (3, 4),
        (6, 6),
        (8, 8),
    ]
    assert rendering.default_scale((26, 26), (6, 6)) == 2  # 26 px maps -> 52 px tiles
    assert rendering.default_scale((100, 100), (6, 6)) == 1
    assert rendering.default_scale((3, 3), (256, 256)) == 2  # capped so the grid fits in 2048 px
    maps = np.zeros((4, 5, 32), np.float32)
    maps[1, 2, 7] = 3.0  # one bright pixel in channel 7; the other channels are constant: black
    picture = rendering.channel_grid(maps, scale=1)
    assert (picture.width, picture.height) == rendering.grid_size((4, 5), 32, 1) == (6 * 5 + 5, 6 * 4 + 5)
    pixels = np.asarray(Image.open(io.BytesIO(picture.png)))
    row, column = divmod(7, 6)
    tile = pixels[row * 5 : row * 5 + 4, column * 6 : column * 6 + 5]
    assert tile[1, 2] == 255 and tile.sum() == 255


def test_kernel_tiles_layouts():
    kernel = np.random.default_rng(1).standard_normal((3, 3, 4, 5)).astype(np.float32)
    tiles, rows, columns = rendering.kernel_tiles(kernel)
    assert tiles.shape == (20, 3, 3) and (rows, columns) == (5, 4)
    # row f, column c is filter f's input channel c, scaled with the rest of filter f
    f, c = 2, 3
    scaled = (kernel[..., f] - kernel[..., f].min()) / np.ptp(kernel[..., f]) * 255
    np.testing.assert_allclose(tiles[f * 4 + c], scaled[:, :, c], atol=0.5)
    assert rendering.kernel_tiles(kernel[:, :, :3])[0].shape == (5, 3, 3, 3)  # RGB tiles
    assert rendering.kernel_tiles(kernel[:, :, :1])[1] is None


def test_jet_runs_blue_to_red():
    assert rendering.jet(np.array([0.0, 0.5, 1.0])).tolist() == [[0, 0, 128], [128, 255, 128], [128, 0, 0]]
