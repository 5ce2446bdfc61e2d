"""Copy a few validation images per task into tests/data/<task>/ for the shipped-model test.

Images come from each model's own validation split (never trained on), re-encoded small:
PNG for digits, JPEG otherwise, photos downscaled so each file is a few KB. The file name
carries the expected label: `<label>__<n>.<ext>`.

    python scripts/pick_samples.py --data ../shared/datasets --per-task 3
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from modelcard import ModelCard, list_versions
from training.datasets import load_fruits, load_mnist, load_signs, stratified_split

FOLDERS = {"digits": "mnist", "fruits": "fruits-360", "signs": "signs", "catsdogs": "catsdogs"}


def _originals(task: str, data: Path, card: ModelCard) -> tuple[list, np.ndarray]:
    """(source items, labels) in the loader's order, so split indices line up."""
    if task == "catsdogs":  # keep the original photos, not the 128x128 model input
        files = sorted((data / "train" / "cats").glob("*.jpg")) + sorted((data / "train" / "dogs").glob("*.jpg"))
        return files, np.array([0 if f.parent.name == "cats" else 1 for f in files])
    loader = {"digits": load_mnist, "fruits": load_fruits, "signs": load_signs}[task]
    dataset = loader(data, card.input)
    return list(dataset.train.x), dataset.train.y


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("tests/data"))
    parser.add_argument("--per-task", type=int, default=3)
    args = parser.parse_args()
    for task_index, (task, folder) in enumerate(FOLDERS.items()):
        rng = np.random.default_rng([0, task_index])  # per task: picks don't depend on which others exist
        versions = list_versions(args.models, task)
        if not versions:
            continue
        card = ModelCard.model_validate_json((args.models / task / str(versions[-1]) / "model.json").read_text())
        if card.training.split != "stratified":  # the others need the images or their file names
            raise SystemExit(
                f"{task} {versions[-1]}: its card says the {card.training.split!r} split; this script "
                "re-creates the stratified split only"
            )
        items, labels = _originals(task, args.data / folder, card)
        _, val_idx = stratified_split(labels, card.training.val_fraction, card.training.seed)
        picked = rng.choice(val_idx, size=min(args.per_task, len(val_idx)), replace=False)
        out = args.out / task
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for n, i in enumerate(picked):
            label = card.class_names[labels[i]]
            item = items[i]
            if isinstance(item, Path):
                image = Image.open(item).convert("RGB")
                image.thumbnail((160, 160))
                image.save(out / f"{label}__{n}.jpg", quality=85)
            elif item.shape[-1] == 1:
                Image.fromarray(item[:, :, 0]).save(out / f"{label}__{n}.png")
            else:
                Image.fromarray(item).save(out / f"{label}__{n}.jpg", quality=90)
        print(task, sorted(p.name for p in out.iterdir()))


if __name__ == "__main__":
    main()
