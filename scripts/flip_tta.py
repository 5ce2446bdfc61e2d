"""Is horizontal-flip test-time augmentation worth its cost for a version? (issue 15)

    python -m scripts.flip_tta catsdogs --model models/catsdogs/2 --data ../shared/datasets/catsdogs

Scores the version's own validation split (same seed, fraction and split kind as its card)
plain and with each image averaged with its mirror image, and times both per image through
the service's compiled TensorFlow call (one image per call, as a lone request is served).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from scripts.model_table import median_call_ms
from service.inference import Classifier
from training.fit import load_version, split_dataset
from training.tasks import TASKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    args = parser.parse_args()

    model, card = load_version(args.model)
    task = TASKS[args.task]
    dataset = task.load(args.data, card.input)
    _, val = split_dataset(dataset, card.training.val_fraction, card.training.seed, card.training.split)
    classifier = Classifier(model, card.input, card.num_classes, 32)
    classifier.warm()
    x = val.x.astype(np.float32)
    plain = np.concatenate([classifier(x[i : i + 32]) for i in range(0, len(x), 32)])
    mirrored = np.concatenate([classifier(x[i : i + 32, :, ::-1]) for i in range(0, len(x), 32)])
    accuracy = float((plain.argmax(1) == val.y).mean())
    tta = float(((plain + mirrored).argmax(1) == val.y).mean())
    one = x[:1]
    single = median_call_ms(classifier, one, 200)
    pair = median_call_ms(classifier, np.concatenate([one, one[:, :, ::-1]]), 200)
    print(
        f"{card.name} v{card.version} on {len(val)} validation images: {accuracy:.2%} plain, {tta:.2%} with flip TTA "
        f"({round((tta - accuracy) * len(val)):+d} images); one image {single:.2f} ms, with its mirror {pair:.2f} ms "
        f"({pair / single:.2f}x)"
    )


if __name__ == "__main__":
    main()
