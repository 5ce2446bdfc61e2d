"""The one image path shared by training and serving: a decoded Pillow image in, the
model's raw input array out (uint8, height x width x channels). Scaling to [0, 1] is a
layer inside each saved model, so nothing here divides by 255."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from PIL import Image

from modelcard.card import InputSpec

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


# EXIF orientation (tag 0x0112) -> the transpose that shows the image upright (as Pillow's
# `ImageOps.exif_transpose`; 1 and unknown values: as stored).
_EXIF_ORIENTATION = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# What Pillow raises on an EXIF block it cannot parse (seen: SyntaxError "not a TIFF file",
# struct.error, TypeError from a mutated JPEG's or WebP's EXIF).
_EXIF_ERRORS = (OSError, SyntaxError, ValueError, TypeError, EOFError, KeyError, IndexError, struct.error)


def exif_orientation(image: Image.Image) -> int:
    """The image's EXIF orientation, 1-8; 1 (as stored) when it has none or its EXIF block
    cannot be read. Orientation is metadata beside valid pixels, so a damaged block is ignored,
    as browsers and photo viewers do, rather than making the image unusable."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except _EXIF_ERRORS:
        return 1
    return orientation if type(orientation) is int and orientation in _UPRIGHT else 1


def _upright(image: Image.Image) -> Image.Image:
    method = _UPRIGHT.get(exif_orientation(image))
    return image if method is None else image.transpose(method)


def _flatten_on_white(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image


# ----------------------------------------------------------------- the MNIST framing
#
# MNIST digits were written dark on light paper, then (LeCun et al.) size-normalised to fit a
# 20x20 box keeping their aspect ratio, anti-aliased, and placed in a 28x28 field so that their
# centre of mass sits at its centre; white ink on black. `frame_digit` does the same to any
# grey image, so a photo or scan of a digit reaches the model the way MNIST digits did.

MNIST_SIZE = 28
MNIST_BOX = 20
# Where MNIST's centres of mass lie (row, column in pixel indices): 13.5..14.5 for all 60,000
# training digits, so 14.0 is their centre.
MNIST_CENTRE = 14.0
_INK = 0.2  # after stretching, what is below this share of full ink is paper, not ink
_MIN_CONTRAST = 24.0  # ink must differ from the paper by this much (0-255) to count as a digit
# Larger images are first reduced (box filter) to this longest side: the digit ends up 20
# pixels tall, so nothing is lost, and the work per image stays bounded.
_WORKING_SIZE = 256


def _border(grey: np.ndarray, width: int) -> np.ndarray:
    return np.concatenate(
        [grey[:width].ravel(), grey[-width:].ravel(), grey[:, :width].ravel(), grey[:, -width:].ravel()]
    )


def _centre_of_mass(grey: np.ndarray) -> tuple[float, float]:
    """(row, column) of the mass of a non-empty, non-negative image.

    Integer images are summed in int64, exactly, so the result is the same float as summing in
    float64 (every partial sum is an integer below 2**53), at a fraction of the cost.
    """
    if grey.dtype.kind in "ui":
        row_mass = grey.sum(axis=1, dtype=np.int64)
        col_mass = grey.sum(axis=0, dtype=np.int64)
        mass = int(row_mass.sum())
        rows = int(row_mass @ np.arange(grey.shape[0])) / mass
        cols = int(col_mass @ np.arange(grey.shape[1])) / mass
        return rows, cols
    mass = grey.sum()
    rows = (grey.sum(axis=1) * np.arange(grey.shape[0])).sum() / mass
    cols = (grey.sum(axis=0) * np.arange(grey.shape[1])).sum() / mass
    return float(rows), float(cols)


def _span(mask: Any) -> tuple[int, int]:
    """First and last index where a 1-D boolean array with a True in it is True (typed Any: numpy's
    stubs give `ndarray.any(axis=...)` a scalar-or-array type)."""
    return int(mask.argmax()), len(mask) - 1 - int(mask[::-1].argmax())


def _median(values: np.ndarray) -> float:
    """`np.median` of a 1-D array, by partition: the same value, in a third of the time on a small ring."""
    half = len(values) // 2
    if len(values) % 2:
        return float(np.partition(values, half)[half])
    low, high = np.partition(values, [half - 1, half])[half - 1 : half + 1]
    return float((low + high) / 2)


def is_mnist_framed(grey: np.ndarray) -> bool:
    """Whether a grey image already looks like an MNIST digit, so framing would only blur it.

    Precisely: 28x28; a dark border (the outer 2-pixel ring averages under 32 of 255: MNIST's
    never exceeds 11); its ink (pixels above a tenth of the brightest) inside a 20x20 box; and
    its centre of mass within one pixel of (14, 14) (MNIST's are within half a pixel).
    """
    if grey.shape != (MNIST_SIZE, MNIST_SIZE):
        return False
    values = grey if grey.dtype == np.uint8 else grey.astype(np.float64)
    peak = float(values.max())
    # the ring's mean, its corners counted twice as the four strips overlap there
    ring = _border(values, 2)
    if peak < _MIN_CONTRAST or float(ring.sum(dtype=np.float64)) / ring.size >= 32:
        return False
    ink = values > 0.1 * peak
    top, bottom = _span(ink.any(axis=1))
    left, right = _span(ink.any(axis=0))
    if bottom - top + 1 > MNIST_BOX or right - left + 1 > MNIST_BOX:
        return False
    cy, cx = _centre_of_mass(values)
    return abs(cy - MNIST_CENTRE) <= 1.0 and abs(cx - MNIST_CENTRE) <= 1.0


def frame_digit(grey: np.ndarray) -> np.ndarray:
    """Frame one grey digit image of any size the MNIST way; a 28x28 uint8 array.

    Inverts it when its background (the median of its border) is light, stretches the ink
    from the paper's level to 255 and drops what is fainter than a fifth of it (paper texture),
    crops to the ink, scales it to fit 20x20 keeping its aspect ratio (Lanczos, anti-aliased
    as MNIST was) and pastes it in 28x28 with its centre of mass at the centre. An image with
    no ink (uniform within 24 grey levels) becomes an empty black field.
    """
    if max(grey.shape) > _WORKING_SIZE:
        scale = _WORKING_SIZE / max(grey.shape)
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        grey = np.asarray(Image.fromarray(grey.astype(np.uint8)).resize(size, Image.Resampling.BOX))
    values = grey.astype(np.float32)
    paper = _median(_border(values, max(1, min(values.shape) // 20)))
    if paper > 127:
        values, paper = 255.0 - values, 255.0 - paper
    contrast = values.max() - paper
    if contrast < _MIN_CONTRAST:
        return np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.uint8)
    ink = np.clip((values - paper) / contrast, 0.0, 1.0)
    ink[ink < _INK] = 0.0  # what is left non-zero is the ink
    top, bottom = _span(ink.any(axis=1))
    left, right = _span(ink.any(axis=0))
    crop = np.round(ink[top : bottom + 1, left : right + 1] * 255).astype(np.uint8)
    height, width = crop.shape
    scale = MNIST_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    glyph = Image.frombytes("L", (width, height), crop.tobytes()).resize(size, Image.Resampling.LANCZOS)
    small = np.frombuffer(glyph.tobytes(), dtype=np.uint8).reshape(size[1], size[0])
    if not small.any():  # a speck that vanished when scaled: keep it visible
        small = np.full_like(small, 255)
    cy, cx = _centre_of_mass(small)
    top = min(max(int(round(MNIST_CENTRE - cy)), 0), MNIST_SIZE - small.shape[0])
    left = min(max(int(round(MNIST_CENTRE - cx)), 0), MNIST_SIZE - small.shape[1])
    field = np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.uint8)
    field[top : top + small.shape[0], left : left + small.shape[1]] = small
    return field


def mnist_framing(grey: np.ndarray) -> np.ndarray:
    """The `preprocess: mnist` step: frame the digit unless it is already MNIST-framed."""
    return grey.astype(np.uint8) if is_mnist_framed(grey) else frame_digit(grey)


def image_to_array(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """Orient, flatten, convert, frame (if the spec says so) and resize one image for a model.

    Args:
        image: a decoded Pillow image of any size and mode.
        spec: the model's input spec; `spec.preprocess == "mnist"` frames grey digits the
            MNIST way (`mnist_framing`) instead of resizing them.

    Returns:
        A uint8 array of shape `spec.shape`.
    """
    image = _flatten_on_white(_upright(image))
    image = image.convert("L" if spec.color_mode == "grayscale" else "RGB")
    if spec.preprocess == "mnist":
        return mnist_framing(np.asarray(image, dtype=np.uint8))[:, :, None]
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), _RESAMPLE[spec.resample])
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return array
