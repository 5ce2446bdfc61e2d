"""Writes a model version the service can read: `<root>/<name>/<version>/`.

A version appears all at once (written in a hidden folder, then renamed into place) and
never replaces an existing one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from modelcard import CARD_FILE, MODEL_FILE, ModelCard, file_sha256, list_versions
from modelcard.exporting import FORMATS, export_model, exporter_available, write_parity_inputs
from modelcard.parity import stored_gate_inputs, write_reference_outputs


def write_version(
    root: Path,
    model: keras.Model,
    card: ModelCard,
    parity_inputs: np.ndarray | None = None,
    parity_source: str = "",
    export: bool = True,
) -> Path:
    """Save `model` with `card` as the next version of `card.name`; returns its folder.

    The card's `version` and `sha256` are filled in here, and so are its `exports` (ONNX and
    OpenVINO IR, for each exporter installed, unless `export` is False), `parity_inputs`
    (real validation inputs the service's parity gate checks other runtimes on) and, with the
    exports, `parity_reference` (the model's outputs on the gate inputs), written in the same
    hidden folder.
    """

    def exports_and_parity(tmp: Path) -> dict:
        formats = [fmt for fmt in FORMATS if export and exporter_available(fmt) is None]
        exports = {fmt: export_model(model, tmp, fmt) for fmt in formats}
        parity = None
        if parity_inputs is not None and len(parity_inputs):
            parity = write_parity_inputs(tmp, parity_inputs, card.input, parity_source)
        # the Keras answers on the gate inputs: the service gates the exports before it loads Keras
        reference = None
        if exports:
            reference = write_reference_outputs(tmp, model, stored_gate_inputs(tmp, card.input, parity))
        return {"exports": exports, "parity_inputs": parity, "parity_reference": reference}

    return _publish(root, card, model.save, exports_and_parity)


def copy_version(root: Path, model_file: Path, card: ModelCard) -> Path:
    """Publish an existing `model.keras`, byte for byte, as the next version with a new `card`
    (e.g. the same weights with a newly declared preprocessing step). It carries no exports:
    `python -m training export` adds them."""
    return _publish(
        root,
        card,
        lambda target: shutil.copyfile(model_file, target),
        lambda tmp: {"exports": {}, "parity_inputs": None, "parity_reference": None},
    )


def _publish(root: Path, card: ModelCard, save: Callable[[Path], object], extras: Callable[[Path], dict]) -> Path:
    folder = Path(root) / card.name
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        save(tmp / MODEL_FILE)
        digest = file_sha256(tmp / MODEL_FILE)
        card = card.model_copy(update=extras(tmp))
        version = max(list_versions(root, card.name), default=0) + 1
        while True:
            final = card.model_copy(update={"version": version, "sha256": digest})
            (tmp / CARD_FILE).write_text(final.model_dump_json(indent=2) + "\n")
            try:
                os.rename(tmp, folder / str(version))  # fails if the version exists: never overwrite
                return folder / str(version)
            except OSError:
                if not (folder / str(version)).exists():
                    raise
                version += 1
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
