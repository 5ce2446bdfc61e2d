"""Checksum-verified, safe loading of a stored model: the one implementation training and
serving share. Keras is imported inside the function, so importing `modelcard` stays light."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modelcard.layout import file_sha256

if TYPE_CHECKING:
    import keras


class ChecksumMismatch(ValueError):
    """A stored file's sha256 differs from the one its card records."""


def verify_sha256(path: Path, expected: str) -> None:
    """Raise `ChecksumMismatch` unless `path`'s sha256 is `expected`."""
    digest = file_sha256(path)
    if digest != expected:
        raise ChecksumMismatch(
            f"sha256 mismatch: {Path(path).name} is {digest[:12]}..., the card says {expected[:12]}..."
        )


def load_verified_model(path: Path, expected_sha256: str) -> keras.Model:
    """Load a `.keras` file after checking its sha256, in safe mode (no code from lambdas), uncompiled.

    Raises:
        ChecksumMismatch: the file is not the one the card describes.
        ValueError: the file needs unsafe deserialisation or is not a Keras model.
    """
    verify_sha256(path, expected_sha256)
    import keras

    return keras.saving.load_model(path, safe_mode=True, compile=False)
