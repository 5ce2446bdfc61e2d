"""The shipped models at a glance: prints the Markdown table README.md and models/README.md
carry, measuring each model's single-image latency in-process through the service's own
inference path (one compiled call per batch, the way a request is served).

    python scripts/model_table.py [--models models]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from modelcard import CARD_FILE, MODEL_FILE, ModelCard, list_versions, load_verified_model
from service.inference import Classifier

TASK_ORDER = ["digits", "fruits", "signs", "catsdogs"]


def single_image_latency_ms(folder: Path, card: ModelCard, runs: int = 300) -> float:
    classifier = Classifier(
        load_verified_model(folder / MODEL_FILE, card.sha256), card.input, len(card.class_names), 32
    )
    classifier.warm()
    image = np.random.default_rng(0).integers(0, 256, (1, *card.input.shape)).astype(np.float32)
    return median_call_ms(classifier, image, runs)


def median_call_ms(classifier: Classifier, batch: np.ndarray, runs: int) -> float:
    """Median wall time of `classifier(batch)` over `runs` calls, in ms."""
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        classifier(batch)
        timings.append(time.perf_counter() - started)
    return float(np.median(timings) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, default=Path("models"))
    args = parser.parse_args()
    print(
        "| task | version | architecture | parameters | input | validation accuracy | seed architecture, "
        "same split | size on disk | single-image latency (in-process, median) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for task in TASK_ORDER:
        for version in list_versions(args.models, task):
            folder = args.models / task / str(version)
            card = ModelCard.model_validate_json((folder / CARD_FILE).read_text())
            spec = card.input
            seed = f"{card.reference.validation_accuracy:.2%}" if card.reference else "-"
            size = (folder / MODEL_FILE).stat().st_size / 1e6
            latency = single_image_latency_ms(folder, card)
            print(
                f"| {task} | {version} | {card.architecture} | {card.parameters.total:,} | "
                f"{spec.height}x{spec.width} {spec.color_mode} | {card.validation.accuracy:.2%} | {seed} | "
                f"{size:.1f} MB | {latency:.2f} ms |"
            )


if __name__ == "__main__":
    main()
