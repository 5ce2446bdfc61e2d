"""Re-save model versions without optimizer state, updating each card's sha256.

Versions written before training/fit.py rebuilt models from their config carried Adam's
slot variables (twice the weights) in model.keras. The weights and everything else in
the card stay as they are; the card's notes record the re-save.

    python scripts/strip_optimizer.py models/digits/1 models/signs/1
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np

from modelcard import CARD_FILE, MODEL_FILE, ModelCard, file_sha256


def has_optimizer(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return "optimizer" in h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")


def strip(folder: Path) -> None:
    model_file, card_file = folder / MODEL_FILE, folder / CARD_FILE
    card = ModelCard.model_validate_json(card_file.read_text())
    if file_sha256(model_file) != card.sha256:
        raise SystemExit(f"{model_file}: sha256 does not match its card; refusing to touch it")
    if not has_optimizer(model_file):
        print(f"{folder}: no optimizer state, left as is")
        return
    model = keras.saving.load_model(model_file, safe_mode=True, compile=False)
    tmp = folder / ".model.keras.tmp.keras"
    model.save(tmp)
    reloaded = keras.saving.load_model(tmp, safe_mode=True, compile=False)
    for a, b in zip(model.get_weights(), reloaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    before = model_file.stat().st_size
    tmp.replace(model_file)
    note = "model.keras re-saved without optimizer state after training (weights unchanged)."
    card = card.model_copy(update={"sha256": file_sha256(model_file), "notes": (card.notes + " " + note).strip()})
    card_file.write_text(card.model_dump_json(indent=2) + "\n")
    print(f"{folder}: {before:,} -> {model_file.stat().st_size:,} bytes")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        strip(Path(arg))
