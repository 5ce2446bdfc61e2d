"""`python -m training export models/<task>/<version>`: add the exported files (ONNX, OpenVINO IR),
the parity gate's real inputs and the Keras model's outputs on the gate inputs to an existing version.

Never touches model.keras (the card's sha256 of it stays); new files are written in a hidden
folder inside the version, moved into place, and the card is replaced last, in one rename. The
files keep their names, so a service that reads the version between the moves and the card's
rename (milliseconds) may meet the old card beside a new file: the sha256 check refuses that
runtime (or the stored outputs) for the version and the compiled TensorFlow call serves, as for
any mismatch; a restart picks the new files up. Export while no service loads the version to
avoid even that.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from modelcard import CARD_FILE, MODEL_FILE, ExportFormat, ModelCard, image_to_array, load_verified_model
from modelcard.exporting import FORMATS, export_model, exporter_available, write_parity_inputs
from modelcard.parity import stored_gate_inputs, write_reference_outputs

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def sample_images(paths: Sequence[Path], card: ModelCard) -> np.ndarray:
    """Image files (or folders of them) as model inputs, through the shared preprocessing."""
    files: list[Path] = []
    for path in map(Path, paths):
        files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"no images found in {', '.join(map(str, paths))}")
    arrays = []
    for file in files:
        try:
            with Image.open(file) as image:
                arrays.append(image_to_array(image, card.input))
        except (OSError, ValueError, SyntaxError) as error:  # missing, unreadable, not an image
            raise ValueError(f"{file}: not a readable image ({type(error).__name__}: {error})") from None
    return np.stack(arrays)


def export_version(
    folder: Path,
    formats: Sequence[ExportFormat] = FORMATS,
    samples: Sequence[Path] = (),
    source: str = "",
    log=print,
) -> ModelCard:
    """Export `folder`'s model in `formats` (and store `samples` as parity inputs), then store the
    model's outputs on the gate inputs; returns the new card. No `formats`: only those outputs."""
    folder = Path(folder)
    card = ModelCard.model_validate_json((folder / CARD_FILE).read_text())
    for fmt in formats:
        if missing := exporter_available(fmt):
            raise ValueError(missing)
    model = load_verified_model(folder / MODEL_FILE, card.sha256)
    tmp = folder / f".tmp-export-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        exports = dict(card.exports)
        for fmt in formats:
            exports[fmt] = export_model(model, tmp, fmt)
            log(f"{folder}: exported {fmt} ({', '.join(exports[fmt].files)})")
        parity = card.parity_inputs
        if samples:
            images = sample_images(samples, card)
            parity = write_parity_inputs(tmp, images, card.input, source or ", ".join(map(str, samples)))
            log(f"{folder}: {len(images)} parity inputs from {parity.source}")
        elif parity is None:
            log(f"{folder}: no --samples given and none stored: the parity gate will use seeded noise only")
        inputs = stored_gate_inputs(tmp if samples else folder, card.input, parity)
        reference = write_reference_outputs(tmp, model, inputs)
        log(f"{folder}: the model's outputs on the {len(inputs)} gate inputs stored ({reference.file})")
        update = {"exports": exports, "parity_inputs": parity, "parity_reference": reference}
        updated = card.model_copy(update=update)
        for child in tmp.iterdir():
            os.replace(child, folder / child.name)
        # only what the card held and what is added: an older card keeps its shape
        (tmp / CARD_FILE).write_text(updated.model_dump_json(indent=2, exclude_unset=True) + "\n")
        os.replace(tmp / CARD_FILE, folder / CARD_FILE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return updated
