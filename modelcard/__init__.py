"""The contract between training and serving: the model card, the store layout and the
image preprocessing both halves share. Light on purpose: pydantic, numpy and Pillow only,
so the service imports it without pulling in training code."""

from modelcard.card import (
    DataProvenance,
    Export,
    ExportFormat,
    InputSpec,
    ModelCard,
    ParameterCount,
    ParityInputs,
    ParityReference,
    ReferenceResult,
    TrainingRun,
    ValidationMetrics,
    WrongPrediction,
)
from modelcard.layout import (
    CARD_FILE,
    EXPORT_FILES,
    MODEL_FILE,
    PARITY_FILE,
    file_sha256,
    list_versions,
    parse_version,
)
from modelcard.loading import ChecksumMismatch, load_verified_model, verify_sha256
from modelcard.preprocess import exif_orientation, image_to_array

__all__ = [
    "CARD_FILE",
    "EXPORT_FILES",
    "PARITY_FILE",
    "ChecksumMismatch",
    "MODEL_FILE",
    "DataProvenance",
    "Export",
    "ExportFormat",
    "InputSpec",
    "ModelCard",
    "ParameterCount",
    "ParityInputs",
    "ParityReference",
    "ReferenceResult",
    "TrainingRun",
    "ValidationMetrics",
    "WrongPrediction",
    "file_sha256",
    "exif_orientation",
    "image_to_array",
    "load_verified_model",
    "list_versions",
    "parse_version",
    "verify_sha256",
]
