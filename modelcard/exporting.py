"""Export a Keras model for ONNX Runtime and OpenVINO with Keras 3's own exporter.

Shared by training (a new version gets its exports), `python -m training export` (an existing
version gets them) and the service (a version without them is exported at load into a cache
folder). Keras and the exporters are imported inside the functions: `modelcard` stays light.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelcard.card import Export, ExportFormat, InputSpec, ParityInputs
from modelcard.layout import EXPORT_FILES, PARITY_FILE, file_sha256

if TYPE_CHECKING:
    import keras

FORMATS: tuple[ExportFormat, ...] = ("onnx", "openvino")


def exporter_available(fmt: ExportFormat) -> str | None:
    """None if `fmt` can be exported in this environment, else why not."""
    modules = {"onnx": ("tf2onnx", "onnx"), "openvino": ("openvino",)}[fmt]
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            return f"exporting to {fmt} needs the {module!r} package (pip install 'keras-serve[export]')"
    return None


def _exporter_description(fmt: ExportFormat) -> str:
    import keras

    if fmt == "onnx":
        import tf2onnx

        return f"keras {keras.__version__} model.export(format='onnx'), tf2onnx {tf2onnx.__version__}"
    import openvino

    return f"keras {keras.__version__} model.export(format='openvino'), openvino {openvino.__version__.split('-')[0]}"


def export_model(model: keras.Model, folder: Path, fmt: ExportFormat) -> Export:
    """Write `model` in `fmt` into `folder` (the file names of `EXPORT_FILES[fmt]`); returns its record."""
    missing = exporter_available(fmt)
    if missing:
        raise RuntimeError(missing)
    folder = Path(folder)
    target = folder / EXPORT_FILES[fmt][0]
    # the exporter traces a model that has been called; a freshly loaded one has not
    model(np.zeros((1, *model.inputs[0].shape[1:]), np.float32), training=False)
    # the exporters print progress (tf2onnx through stdout); a server's log should not get it
    with contextlib.redirect_stdout(io.StringIO()):
        model.export(str(target), format=fmt, verbose=False)
    return Export(
        files={name: file_sha256(folder / name) for name in EXPORT_FILES[fmt]},
        exporter=_exporter_description(fmt),
    )


def write_parity_inputs(folder: Path, images: np.ndarray, spec: InputSpec, source: str) -> ParityInputs:
    """Store real inputs for the parity gate as uint8 `parity_inputs.npy` in `folder`."""
    images = np.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != spec.shape or len(images) == 0:
        raise ValueError(f"parity inputs of shape {images.shape}; expected (n, {', '.join(map(str, spec.shape))})")
    path = Path(folder) / PARITY_FILE
    np.save(path, np.clip(np.rint(images), 0, 255).astype(np.uint8))
    return ParityInputs(file=PARITY_FILE, sha256=file_sha256(path), count=len(images), source=source)
