"""Publish a digits version that declares the MNIST framing (`preprocess: mnist`), same weights.

Measures the source version on digits rendered from fonts (dark on light, other sizes) with
and without the framing, and on its MNIST validation split raw and through the framing path,
then writes the next version: the source's `model.keras` byte for byte, with a card that
declares the step and records the figures.

    python scripts/frame_digits.py --model models/digits/1 --data ../shared/datasets/mnist --out models
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from modelcard import MODEL_FILE, image_to_array
from training.datasets import load_mnist
from training.fit import load_version, split_dataset
from training.rendered_digits import fonts, render_digits, rendered_digits_accuracy
from training.store import copy_version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("models"))
    args = parser.parse_args()

    model, card = load_version(args.model)
    plain = card.input.model_copy(update={"preprocess": "none"})
    framed = card.input.model_copy(update={"preprocess": "mnist"})
    font_list = fonts()
    images, labels = render_digits(font_list)
    with_framing = rendered_digits_accuracy(model, framed, images, labels)
    without = rendered_digits_accuracy(model, plain, images, labels)
    print(f"{len(images)} digits rendered from {len(font_list)} fonts: {with_framing:.4f} framed, {without:.4f} not")

    _, val = split_dataset(load_mnist(args.data), card.training.val_fraction, card.training.seed, card.training.split)
    started = time.perf_counter()
    through = np.stack([image_to_array(Image.fromarray(a[..., 0]), framed) for a in val.x])
    per_image_us = (time.perf_counter() - started) / len(val) * 1e6
    changed = int((through != val.x).any(axis=(1, 2, 3)).sum())
    raw_acc = float((model.predict(val.x.astype(np.float32), verbose=0).argmax(1) == val.y).mean())
    framed_acc = float((model.predict(through.astype(np.float32), verbose=0).argmax(1) == val.y).mean())
    print(
        f"MNIST validation ({len(val)}): {raw_acc:.4f} raw, {framed_acc:.4f} through the framing "
        f"({changed} images changed by it; {per_image_us:.0f} us per image)"
    )

    command = "python " + shlex.join(sys.argv)
    new = card.model_copy(
        update={
            "input": framed,
            "extra_evaluations": {
                "rendered_digits_accuracy": with_framing,
                "rendered_digits_accuracy_without_framing": without,
                "validation_accuracy_through_framing": framed_acc,
                "validation_images_changed_by_framing": float(changed),
            },
            "notes": (
                f"{card.notes} Version {card.version + 1}: the same model.keras as version {card.version} "
                f"(byte for byte, no retraining), with the MNIST framing declared as its preprocessing "
                f"(`input.preprocess: mnist`; published by `{command}`). On {len(images)} digits rendered "
                f"from {len(font_list)} fonts as dark ink on light paper at other sizes and positions: "
                f"{with_framing:.2%} with the framing, {without:.2%} without. MNIST validation through the "
                f"framing path: {framed_acc:.2%} ({changed} of {len(val)} images changed by it), as raw: "
                f"{raw_acc:.2%}."
            ),
            "created_at": datetime.now(UTC),
        }
    )
    print(f"wrote {copy_version(args.out, args.model / MODEL_FILE, new)}")


if __name__ == "__main__":
    main()
