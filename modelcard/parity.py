"""The parity gate's inputs and the Keras model's answers on them: one definition for both halves.

The gate checks every other runtime against the Keras model on seeded noise plus the real
inputs stored with a version (`parity_inputs.npy`). Training and `python -m training export`
also store the Keras model's probabilities on exactly those inputs (`parity_outputs.npy`, with
the sha256 of the inputs they answer), so the service can gate an exported runtime before it
loads Keras at all; the Keras model, loaded afterwards, confirms the answer.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelcard.card import InputSpec, ModelCard, ParityInputs, ParityReference
from modelcard.layout import PARITY_OUTPUTS_FILE, file_sha256
from modelcard.loading import verify_sha256

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

NOISE_IMAGES = 8
NOISE_SEED = 20240612


def noise_inputs(spec: InputSpec) -> np.ndarray:
    """The gate's seeded noise: `NOISE_IMAGES` images of uniform raw pixels."""
    rng = np.random.default_rng(NOISE_SEED)
    return rng.uniform(0, 255, (NOISE_IMAGES, *spec.shape)).astype(np.float32)


def gate_inputs(card: ModelCard, folder: Path) -> tuple[np.ndarray, str]:
    """Seeded noise plus the version's stored real inputs (when present and intact), and what they are."""
    stored = card.parity_inputs
    if stored is None:
        return noise_inputs(card.input), f"{NOISE_IMAGES} seeded noise images (the version stores no real inputs)"
    try:
        inputs = stored_gate_inputs(Path(folder), card.input, stored)
    except (OSError, ValueError) as error:
        log.warning("%s v%d: parity inputs unusable (%s); gating on noise only", card.name, card.version, error)
        return noise_inputs(card.input), f"{NOISE_IMAGES} seeded noise images (stored real inputs unusable: {error})"
    return inputs, f"{NOISE_IMAGES} seeded noise + {len(inputs) - NOISE_IMAGES} real images ({stored.source})"


def stored_gate_inputs(folder: Path, spec: InputSpec, parity: ParityInputs | None) -> np.ndarray:
    """Noise plus the real inputs in `folder` (checked); raises if they are damaged."""
    noise = noise_inputs(spec)
    return noise if parity is None else np.concatenate([noise, load_parity_inputs(Path(folder), parity, spec)])


def load_parity_inputs(folder: Path, stored: ParityInputs, spec: InputSpec) -> np.ndarray:
    """The stored real inputs as float32, checked against their sha256 and the input shape."""
    path = folder / stored.file
    verify_sha256(path, stored.sha256)
    real = np.load(path, allow_pickle=False).astype(np.float32)
    if real.shape[1:] != spec.shape:
        raise ValueError(f"shape {real.shape}")
    return real


def inputs_digest(inputs: np.ndarray) -> str:
    """sha256 of the gate inputs as float32 bytes: which inputs a set of outputs answers."""
    return hashlib.sha256(np.ascontiguousarray(inputs, np.float32).tobytes()).hexdigest()


def write_reference_outputs(folder: Path, model: keras.Model, inputs: np.ndarray) -> ParityReference:
    """Store the Keras model's probabilities on the gate `inputs` as `parity_outputs.npy` in `folder`."""
    import keras

    outputs = np.concatenate(
        [np.asarray(model(inputs[i : i + 64], training=False), np.float32) for i in range(0, len(inputs), 64)]
    )
    path = Path(folder) / PARITY_OUTPUTS_FILE
    np.save(path, outputs)
    return ParityReference(
        file=PARITY_OUTPUTS_FILE,
        sha256=file_sha256(path),
        inputs_sha256=inputs_digest(inputs),
        computed_by=f"keras {keras.__version__} ({keras.backend.backend()})",
    )


def reference_outputs(card: ModelCard, folder: Path, inputs: np.ndarray) -> np.ndarray | None:
    """The stored Keras outputs for exactly these gate inputs, or None (none stored, other inputs, damaged)."""
    stored = card.parity_reference
    if stored is None or stored.inputs_sha256 != inputs_digest(inputs):
        return None
    try:
        verify_sha256(Path(folder) / stored.file, stored.sha256)
        outputs = np.load(Path(folder) / stored.file, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as error:  # ChecksumMismatch is a ValueError
        log.warning("%s v%d: stored parity outputs unusable (%s)", card.name, card.version, error)
        return None
    return outputs if outputs.shape == (len(inputs), card.num_classes) else None
