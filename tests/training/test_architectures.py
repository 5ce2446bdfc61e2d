from __future__ import annotations

import numpy as np
import pytest

from training.architectures import ARCHITECTURES, augmentation_layers, get_architecture

NUM_CLASSES = {"digits": 10, "fruits": 60, "signs": 6, "catsdogs": 2}


@pytest.mark.parametrize(
    ("task", "total", "trainable"),
    [
        ("digits", 54_410, 54_410),
        ("fruits", 10_865_724, 10_865_724),
        ("signs", 170_438, 170_246),
        ("catsdogs", 200_970, 200_970),
    ],
)
def test_seed_architectures_match_the_posts(task: str, total: int, trainable: int):
    arch = get_architecture(task, "seed")
    model = arch.build(arch.input, NUM_CLASSES[task])
    assert model.count_params() == total
    assert int(sum(np.prod(w.shape) for w in model.trainable_weights)) == trainable


@pytest.mark.parametrize("task", list(ARCHITECTURES))
def test_every_model_carries_its_preprocessing_and_names_its_layers(task: str):
    for arch in ARCHITECTURES[task].values():
        model = arch.build(arch.input, NUM_CLASSES[task])
        assert model.input_shape == (None, *arch.input.shape)
        assert [layer.name for layer in model.layers[:2]] == ["image", "rescale"]
        assert model.layers[-1].name == "probabilities"
        # raw 0-255 pixels in, a probability distribution out
        out = model(np.full((2, *arch.input.shape), 255.0, np.float32)).numpy()
        assert out.shape == (2, NUM_CLASSES[task])
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
        assert not any(layer.name.startswith(("conv2d", "dense", "max_pooling")) for layer in model.layers)


def test_improved_is_not_the_seed():
    for task in ARCHITECTURES:
        seed, improved = ARCHITECTURES[task]["seed"], ARCHITECTURES[task]["improved"]
        assert seed.build(seed.input, 2).count_params() != improved.build(improved.input, 2).count_params()


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(KeyError, match="known: digits: seed/improved"):
        get_architecture("digits", "resnet")


def _saturation(images: np.ndarray) -> np.ndarray:
    """HSV saturation per image, averaged over pixels."""
    high, low = images.max(-1), images.min(-1)
    return ((high - low) / np.maximum(high, 1e-6)).mean(axis=(1, 2))


def test_saturation_jitter_spreads_around_the_original_instead_of_greying_every_image():
    # Keras' RandomSaturation(0.3) multiplies saturation by at most 0.43: our "saturation:0.3"
    # means a factor in [0.7, 1.3]
    images = np.random.default_rng(0).uniform(40, 200, (256, 16, 16, 3)).astype("float32")
    augmented = np.asarray(augmentation_layers(("saturation:0.3",), seed=1)(images, training=True))
    ratio = _saturation(augmented) / _saturation(images)
    assert ratio.min() > 0.65 and ratio.max() > 1.15, (ratio.min(), ratio.max())
    assert 0.9 < np.median(ratio) < 1.1
    with pytest.raises(ValueError, match="saturation"):
        augmentation_layers(("saturation:1.5",), seed=1)
