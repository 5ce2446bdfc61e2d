"""Digits as people send them: rendered from fonts, dark ink on light paper, any size.

A photo or scan of a digit is dark on light, off-centre and at any size, unlike MNIST (white
on black, 20x20 box centred by mass in 28x28). These images measure how a digits model does
on such input through its own declared preprocessing (`modelcard.image_to_array` with the
card's input spec): with `preprocess: mnist` they are framed the MNIST way, without it they
are only resized.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from modelcard import InputSpec, image_to_array

FONT_DIRS = [Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path("/Library/Fonts")]
# Canvas sizes (width, height): none is 28x28, several are not square.
CANVASES = ((64, 64), (120, 90), (90, 160), (300, 200))


def fonts(size: int = 96, max_fonts: int = 24) -> list[ImageFont.FreeTypeFont | ImageFont.ImageFont]:
    """The machine's TrueType fonts (sorted by file name, up to `max_fonts`), plus Pillow's
    bundled scalable font, which every Pillow wheel carries (so a fresh machine has one)."""
    files = sorted({p for d in FONT_DIRS if d.is_dir() for p in d.rglob("*.ttf")}, key=lambda p: p.name)
    found: list[ImageFont.FreeTypeFont | ImageFont.ImageFont] = []
    for file in files[:max_fonts]:
        try:
            found.append(ImageFont.truetype(str(file), size))
        except OSError:
            continue
    found.append(ImageFont.load_default(size=size))
    return found


def render_digits(
    font_list: list[ImageFont.FreeTypeFont] | None = None,
    angles: tuple[int, ...] = (-10, 0, 10),
    seed: int = 0,
) -> tuple[list[Image.Image], np.ndarray]:
    """Every digit in every font and angle, dark grey ink on light grey paper, on canvases
    of several sizes, at a random scale (glyph 35-80% of the canvas height) and position.

    Returns:
        grey Pillow images of various sizes, and their labels (int64).
    """
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for font_index, font in enumerate(font_list if font_list is not None else fonts()):
        for digit in range(10):
            glyph = Image.new("L", (200, 200), 0)
            ImageDraw.Draw(glyph).text((100, 100), str(digit), fill=255, font=font, anchor="mm")
            for angle in angles:
                rotated = glyph.rotate(angle, resample=Image.Resampling.BILINEAR)
                box = rotated.getbbox()
                if box is None:
                    continue
                ink = rotated.crop(box)
                width, height = CANVASES[(font_index + digit + angle) % len(CANVASES)]
                scale = rng.uniform(0.35, 0.8) * height / ink.height
                scale = min(scale, 0.9 * width / ink.width)
                ink = ink.resize((max(1, round(ink.width * scale)), max(1, round(ink.height * scale))))
                paper, pen = int(rng.integers(200, 250)), int(rng.integers(0, 60))
                canvas = Image.new("L", (width, height), paper)
                left = int(rng.integers(0, width - ink.width + 1))
                top = int(rng.integers(0, height - ink.height + 1))
                canvas.paste(Image.new("L", ink.size, pen), (left, top), mask=ink)
                images.append(canvas)
                labels.append(digit)
    return images, np.array(labels, dtype=np.int64)


def rendered_digits_accuracy(model, spec: InputSpec, images=None, labels=None) -> float:
    """Accuracy of `model` on the rendered digits, each through `image_to_array(image, spec)`."""
    if images is None:
        images, labels = render_digits()
    x = np.stack([image_to_array(image, spec) for image in images]).astype(np.float32)
    probabilities = model.predict(x, verbose=0)
    return float((probabilities.argmax(axis=1) == labels).mean())
