"""Where model versions live: `<root>/<name>/<version>/{model.keras,model.json}`.

Versions are positive integers, named without leading zeros. Directories whose name is not one (for example the
`.tmp-*` folders a writer renames into place) are never versions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MODEL_FILE = "model.keras"
CARD_FILE = "model.json"
# optional, recorded in the card: the model exported for other runtimes, the parity gate's real inputs,
# and the Keras model's outputs on the gate inputs (`modelcard.parity`)
EXPORT_FILES = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin")}
PARITY_FILE = "parity_inputs.npy"
PARITY_OUTPUTS_FILE = "parity_outputs.npy"


def parse_version(text: str) -> int | None:
    """`text` as a version number, or None: ASCII digits without a leading zero ("¹".isdigit() is
    True, and "01" would be a second name for version 1)."""
    if text.isascii() and text.isdigit() and not text.startswith("0"):
        return int(text)
    return None


def list_versions(root: Path, name: str) -> list[int]:
    """Complete versions of model `name` under `root`, ascending."""
    folder = Path(root) / name
    if not folder.is_dir():
        return []
    versions = []
    for child in folder.iterdir():
        version = parse_version(child.name)
        if version is not None and child.is_dir() and (child / MODEL_FILE).is_file() and (child / CARD_FILE).is_file():
            versions.append(version)
    return sorted(versions)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
