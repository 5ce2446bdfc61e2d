"""The one image path shared by training and serving: a decoded Pillow image in, the
model's raw input array out (uint8, height x width x channels). Scaling to [0, 1] is a
layer inside each saved model, so nothing here divides by 255."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from modelcard.card import InputSpec

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _flatten_on_white(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image


def image_to_array(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """Orient, flatten, convert and resize one image for a model with input `spec`.

    Args:
        image: a decoded Pillow image of any size and mode.
        spec: the model's input spec.

    Returns:
        A uint8 array of shape `spec.shape`.
    """
    image = ImageOps.exif_transpose(image)
    image = _flatten_on_white(image)
    image = image.convert("L" if spec.color_mode == "grayscale" else "RGB")
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), _RESAMPLE[spec.resample])
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return array
