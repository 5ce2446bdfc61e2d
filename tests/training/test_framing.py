"""The MNIST framing (`preprocess: mnist`): dark-on-light digits of any size become MNIST-like
28x28 fields, already framed digits pass through untouched, other specs are unaffected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydantic import ValidationError

from modelcard import InputSpec, image_to_array
from modelcard.preprocess import MNIST_CENTRE, frame_digit, is_mnist_framed, mnist_framing
from training.rendered_digits import render_digits

FRAMED = InputSpec(height=28, width=28, channels=1, color_mode="grayscale", preprocess="mnist")
PLAIN = InputSpec(height=28, width=28, channels=1, color_mode="grayscale")
ROOT = Path(__file__).resolve().parents[2]


def _centre(field: np.ndarray) -> tuple[float, float]:
    values = field.astype(np.float64)
    mass = values.sum()
    return (
        float((values.sum(axis=1) * np.arange(28)).sum() / mass),
        float((values.sum(axis=0) * np.arange(28)).sum() / mass),
    )


def _ink_box(field: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(field > 0)
    return int(np.ptp(rows)) + 1, int(np.ptp(cols)) + 1


def _dark_on_light_seven(size=(150, 90), at=(20, 10), paper=230, pen=40) -> Image.Image:
    canvas = Image.new("L", size, paper)
    draw = ImageDraw.Draw(canvas)
    x, y = at
    draw.line([(x, y), (x + 40, y), (x + 15, y + 60)], fill=pen, width=7)
    return canvas


def test_a_dark_on_light_digit_of_another_size_is_framed_like_mnist():
    field = image_to_array(_dark_on_light_seven(), FRAMED)[..., 0]
    assert field.shape == (28, 28) and field.dtype == np.uint8
    assert np.median(field) == 0 and field[:3].max() == 0  # black paper (centring by mass may push a tail to an edge)
    assert max(_ink_box(field)) == 20  # fitted in the 20x20 box
    cy, cx = _centre(field)
    assert abs(cy - MNIST_CENTRE) <= 0.5 and abs(cx - MNIST_CENTRE) <= 0.5
    assert field.max() >= 200  # ink is white, stretched from the pen's grey


def test_position_and_polarity_do_not_matter():
    here = image_to_array(_dark_on_light_seven(at=(5, 5)), FRAMED)[..., 0]
    there = image_to_array(_dark_on_light_seven(at=(95, 25)), FRAMED)[..., 0]
    negative = Image.eval(_dark_on_light_seven(at=(95, 25)), lambda v: 255 - v)
    inverted = image_to_array(negative, FRAMED)[..., 0]
    np.testing.assert_array_equal(here, there)
    assert np.abs(inverted.astype(int) - there.astype(int)).max() <= 2  # paper/pen levels differ slightly


def test_the_aspect_ratio_is_kept():
    bar = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(bar).rectangle([90, 20, 101, 179], fill=0)  # 12 wide, 160 tall
    height, width = _ink_box(image_to_array(bar, FRAMED)[..., 0])
    assert height == 20 and 1 <= width <= 3


def test_an_image_without_ink_becomes_an_empty_field():
    assert not image_to_array(Image.new("L", (64, 48), 240), FRAMED).any()
    speckled = np.full((64, 64), 200, dtype=np.uint8) + np.random.default_rng(0).integers(0, 10, (64, 64)).astype(
        np.uint8
    )
    assert not frame_digit(speckled).any()


def test_colour_and_transparent_images_are_framed_too():
    rgb = _dark_on_light_seven().convert("RGB")
    rgba = Image.new("RGBA", (150, 90), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).line([(20, 10), (60, 10), (35, 70)], fill=(0, 0, 255, 255), width=7)
    reference = image_to_array(_dark_on_light_seven(), FRAMED)
    assert np.abs(image_to_array(rgb, FRAMED).astype(int) - reference.astype(int)).max() <= 2
    assert max(_ink_box(image_to_array(rgba, FRAMED)[..., 0])) == 20


def _mnist_like_digits() -> list[np.ndarray]:
    """Digits framed as MNIST was, from Pillow's bundled font (present on every machine)."""
    font = ImageFont.load_default(size=80)
    digits = []
    for digit in range(10):
        glyph = Image.new("L", (120, 120), 0)
        ImageDraw.Draw(glyph).text((60, 60), str(digit), fill=255, font=font, anchor="mm")
        digits.append(frame_digit(np.asarray(glyph)))
    return digits


def test_framing_is_idempotent_on_already_framed_digits():
    for field in _mnist_like_digits():
        assert is_mnist_framed(field)
        np.testing.assert_array_equal(mnist_framing(field), field)
        np.testing.assert_array_equal(image_to_array(Image.fromarray(field), FRAMED)[..., 0], field)


def test_an_mnist_digit_is_left_as_it_is():
    # An MNIST training digit ("5", the first of the set) as raw pixels: 20 rows tall, centred by mass.
    five = np.zeros((28, 28), dtype=np.uint8)
    rows = {
        5: (12, 16, 255),
        6: (8, 16, 250),
        7: (7, 9, 240),
        8: (7, 9, 240),
        9: (7, 9, 240),
        10: (7, 14, 253),
        11: (12, 16, 250),
        12: (15, 18, 240),
        13: (16, 19, 240),
        14: (16, 19, 240),
        15: (16, 19, 240),
        16: (15, 18, 240),
        17: (7, 17, 250),
        18: (8, 15, 250),
        19: (9, 12, 100),
    }
    for row, (start, stop, value) in rows.items():
        five[row, start:stop] = value
    cy, cx = _centre(five)
    five = np.roll(five, (round(MNIST_CENTRE - cy), round(MNIST_CENTRE - cx)), axis=(0, 1))  # centred by mass
    assert is_mnist_framed(five)
    np.testing.assert_array_equal(image_to_array(Image.fromarray(five), FRAMED)[..., 0], five)


def test_what_is_not_framed_is_framed():
    off_centre = np.zeros((28, 28), dtype=np.uint8)
    off_centre[2:10, 2:8] = 255
    assert not is_mnist_framed(off_centre)
    three = _mnist_like_digits()[3]
    light = 255 - three
    assert not is_mnist_framed(light)
    again = mnist_framing(light)
    assert is_mnist_framed(again)
    # The same digit back; only its faintest anti-aliased edge (under a fifth of full ink) is dropped.
    assert np.abs(again.astype(int) - three.astype(int)).max() <= 255 * 0.2 + 1


def test_without_the_step_nothing_changes():
    image = _dark_on_light_seven()
    expected = np.asarray(image.resize((28, 28), Image.Resampling.BILINEAR))[..., None]
    np.testing.assert_array_equal(image_to_array(image, PLAIN), expected)


def test_the_step_is_declared_in_the_card_and_optional():
    assert PLAIN.preprocess == "none"
    old = json.loads((ROOT / "models" / "digits" / "1" / "model.json").read_text())["input"]
    assert "preprocess" not in old and InputSpec.model_validate(old).preprocess == "none"
    with pytest.raises(ValidationError, match="28x28 grayscale"):
        InputSpec(height=64, width=64, channels=3, color_mode="rgb", preprocess="mnist")


def test_rendered_digits_are_dark_on_light_and_not_mnist_sized():
    images, labels = render_digits([ImageFont.load_default(size=96)], angles=(0,))
    assert len(images) == 10 and list(labels) == list(range(10))
    for image in images:
        pixels = np.asarray(image)
        assert image.size != (28, 28)
        assert np.median(pixels) > 150 and pixels.min() < 100


def test_a_large_photo_is_framed_like_a_small_one():
    small = image_to_array(_dark_on_light_seven(), FRAMED)[..., 0].astype(int)
    large = image_to_array(_dark_on_light_seven().resize((1500, 900), Image.Resampling.BICUBIC), FRAMED)[..., 0]
    assert max(_ink_box(large)) == 20
    assert _ink_box(large) == _ink_box(small.astype(np.uint8))
    assert all(abs(c - MNIST_CENTRE) <= 0.55 for c in _centre(large))
    # the same digit, up to resampling and a one-pixel difference in where rounding puts it
    shifts = [np.roll(large, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    assert max(np.corrcoef(moved.ravel(), small.ravel())[0, 1] for moved in shifts) > 0.9


def test_integer_images_frame_exactly_as_their_float_copies():
    # the framing sums uint8 images in int64 for speed: the same floats as float64 sums, so the
    # same framed pixels and the same "already framed" answers
    from modelcard.preprocess import _centre_of_mass

    rng = np.random.default_rng(3)
    mnist_like = np.zeros((28, 28), np.uint8)
    mnist_like[6:22, 9:19] = rng.integers(0, 256, (16, 10), dtype=np.uint8)
    images = [mnist_like, np.roll(mnist_like, (1, -1), axis=(0, 1)), rng.integers(0, 256, (28, 28), dtype=np.uint8)]
    images += [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(5, 9), (40, 31), (120, 300)]]
    for image in images:
        assert _centre_of_mass(image) == _centre_of_mass(image.astype(np.float64))
        assert is_mnist_framed(image) == is_mnist_framed(image.astype(np.float64))
        np.testing.assert_array_equal(frame_digit(image), frame_digit(image.astype(np.float64)))
    # and the comparison covered an "already framed" answer of True, not only False ones
    assert is_mnist_framed(mnist_like) or is_mnist_framed(np.roll(mnist_like, (1, -1), axis=(0, 1)))
