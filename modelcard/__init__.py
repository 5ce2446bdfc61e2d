"""The contract between training and serving: the model card, the store layout and the
image preprocessing both halves share. Light on purpose: pydantic, numpy and Pillow only,
so the service imports it without pulling in training code."""

from modelcard.card import (
    DataProvenance,
    InputSpec,
    ModelCard,
    ParameterCount,
    ReferenceResult,
    TrainingRun,
    ValidationMetrics,
    WrongPrediction,
)
from modelcard.layout import CARD_FILE, MODEL_FILE, file_sha256, list_versions, version_dir
from modelcard.preprocess import image_to_array

__all__ = [
    "CARD_FILE",
    "MODEL_FILE",
    "DataProvenance",
    "InputSpec",
    "ModelCard",
    "ParameterCount",
    "ReferenceResult",
    "TrainingRun",
    "ValidationMetrics",
    "WrongPrediction",
    "file_sha256",
    "image_to_array",
    "list_versions",
    "version_dir",
]
