"""Where model versions live: `<root>/<name>/<version>/{model.keras,model.json}`.

Versions are positive integers. Directories whose name is not an integer (for example the
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


def list_versions(root: Path, name: str) -> list[int]:
    """Complete versions of model `name` under `root`, ascending."""
    folder = Path(root) / name
    if not folder.is_dir():
        return []
    versions = []
    for child in folder.iterdir():
        is_version = child.is_dir() and child.name.isascii() and child.name.isdigit() and int(child.name) > 0
        if is_version and (child / MODEL_FILE).is_file() and (child / CARD_FILE).is_file():
            versions.append(int(child.name))
    return sorted(versions)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
