"""Digits drawn differently from MNIST: rendered from fonts, then framed the MNIST way.

MNIST digits were scaled to fit a 20x20 box (keeping their aspect ratio) and placed in a
28x28 image so that their centre of mass sits at the centre. Users upload digits that
were never in MNIST; this measures how the model does on such images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_DIRS = [Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path("/Library/Fonts")]


def mnist_frame(glyph: np.ndarray) -> np.ndarray:
    """Frame a white-on-black grey image (any size) like MNIST: 20x20 box, centred by mass."""
    ys, xs = np.nonzero(glyph > 0)
    if len(ys) == 0:
        return np.zeros((28, 28), dtype=np.uint8)
    crop = glyph[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
    canvas = np.zeros((28, 28), dtype=np.float64)
    mass = small.sum()
    cy = (small.sum(axis=1) * np.arange(small.shape[0])).sum() / mass
    cx = (small.sum(axis=0) * np.arange(small.shape[1])).sum() / mass
    top = int(round(13.5 - cy))
    left = int(round(13.5 - cx))
    top = min(max(top, 0), 28 - small.shape[0])
    left = min(max(left, 0), 28 - small.shape[1])
    canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _fonts() -> list[ImageFont.FreeTypeFont | ImageFont.ImageFont]:
    files = sorted(
        {p for d in FONT_DIRS if d.is_dir() for p in d.rglob("*.ttf")},
        key=lambda p: p.name,
    )
    fonts: list[ImageFont.FreeTypeFont | ImageFont.ImageFont] = []
    for file in files:
        try:
            fonts.append(ImageFont.truetype(str(file), 96))
        except OSError:
            continue
    if not fonts:  # Pillow's bundled scalable font, always there
        fonts.append(ImageFont.load_default(size=96))
    return fonts


def render_digits(max_fonts: int = 24, angles: tuple[int, ...] = (-10, 0, 10)) -> tuple[np.ndarray, np.ndarray]:
    """Every digit in every font (up to `max_fonts`) and angle, MNIST-framed.

    Returns:
        images uint8 (N, 28, 28, 1) and labels int64 (N,).
    """
    images, labels = [], []
    for font in _fonts()[:max_fonts]:
        for digit in range(10):
            canvas = Image.new("L", (160, 160), 0)
            ImageDraw.Draw(canvas).text((80, 80), str(digit), fill=255, font=font, anchor="mm")
            for angle in angles:
                rotated = canvas.rotate(angle, resample=Image.Resampling.BILINEAR)
                images.append(mnist_frame(np.asarray(rotated)))
                labels.append(digit)
    return np.stack(images)[..., None], np.array(labels, dtype=np.int64)


def rendered_digits_accuracy(model) -> float:
    images, labels = render_digits()
    probabilities = model.predict(images.astype(np.float32), verbose=0)
    return float((probabilities.argmax(axis=1) == labels).mean())
