"""The model card: what `model.json` next to each `model.keras` holds."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ColorMode = Literal["grayscale", "rgb"]


class InputSpec(BaseModel):
    """What one image must look like before it enters the model.

    The model itself rescales pixels to [0, 1]; callers feed raw pixel values in
    `value_range` with this height, width and colour mode. `resample` names the Pillow
    filter used to resize images to this size, in training and in serving alike.
    """

    model_config = ConfigDict(frozen=True)

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[1, 3]
    color_mode: ColorMode
    dtype: Literal["float32"] = "float32"
    value_range: tuple[float, float] = (0.0, 255.0)
    resample: Literal["bilinear", "bicubic", "lanczos", "nearest", "box"] = "bilinear"
    preprocess: Literal["none", "mnist"] = Field(
        "none",
        description="a framing step before resizing: 'mnist' inverts dark-on-light images, crops to the ink, "
        "fits it in 20x20 keeping the aspect ratio and centres it by mass in 28x28, as MNIST was made",
    )

    @model_validator(mode="after")
    def _channels_match_mode(self) -> InputSpec:
        expected = 1 if self.color_mode == "grayscale" else 3
        if self.channels != expected:
            raise ValueError(f"color_mode {self.color_mode!r} needs {expected} channel(s)")
        if self.preprocess == "mnist" and (self.shape != (28, 28, 1)):
            raise ValueError("preprocess 'mnist' frames digits in 28x28 grayscale; this input is " + str(self.shape))
        return self

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


class ParameterCount(BaseModel):
    total: int
    trainable: int


class DataProvenance(BaseModel):
    path: str
    format: str
    train_counts: dict[str, int] = Field(description="training images per class, after the split")
    validation_counts: dict[str, int] = Field(description="validation images per class")
    validation_source: str = Field(description="how the validation set was obtained")


class WrongPrediction(BaseModel):
    file: str
    true: str
    predicted: str
    confidence: float


class ValidationMetrics(BaseModel):
    accuracy: float
    loss: float
    per_class_accuracy: dict[str, float]
    confusion_matrix: list[list[int]] = Field(description="rows: true class, columns: predicted")
    wrong_examples: list[WrongPrediction] = Field(
        default_factory=list, description="a sample of misclassified validation images, when they have file names"
    )


class TrainingRun(BaseModel):
    command: str
    wall_time_seconds: float
    epochs: int
    batch_size: int
    seed: int
    val_fraction: float
    split: Literal["grouped", "stratified", "recording", "frames"] = Field(
        "stratified",
        description="how validation was carved: per class at random with copies of an image on one side (grouped) "
        "or without looking for copies (stratified), by whole recordings, or by frame ranges",
    )
    optimizer: str
    learning_rate: float
    label_smoothing: float = 0.0
    augmentation: list[str] = Field(default_factory=list)
    batchnorm_recalibrated: bool = Field(
        False, description="BatchNorm statistics re-estimated on the clean training images after fitting"
    )
    tensorflow_version: str
    keras_version: str
    python_version: str


class ReferenceResult(BaseModel):
    """The reference ("seed") architecture trained on the same split, for comparison."""

    architecture: str
    parameters: int
    validation_accuracy: float
    epochs: int
    wall_time_seconds: float
    command: str


ExportFormat = Literal["onnx", "openvino"]


class Export(BaseModel):
    """The model exported for another runtime by Keras' own exporter, next to model.keras."""

    files: dict[str, str] = Field(description="file name in the version folder -> its sha256")
    exporter: str = Field(description="what wrote it, with versions")


class ParityInputs(BaseModel):
    """Real inputs (raw pixels, uint8 `.npy` of shape (n, height, width, channels)) every other
    runtime must reproduce the Keras model's probabilities on, besides seeded noise."""

    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    count: int = Field(ge=1)
    source: str = Field(description="where the images come from")


class ParityReference(BaseModel):
    """The Keras model's probabilities (float32 `.npy`, (n, classes)) on the gate's inputs: seeded
    noise plus the stored real inputs (`modelcard.parity`). The service gates exported runtimes
    against them before loading Keras; the Keras model confirms once it is loaded."""

    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    inputs_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the float32 inputs they answer")
    computed_by: str = Field(description="the Keras version and backend that computed them")


class ModelCard(BaseModel):
    """Everything the service needs to load, check and describe one model version."""

    schema_version: Literal[1] = 1
    name: str
    version: int = Field(ge=1)
    task: str
    description: str = ""
    class_names: list[str] = Field(min_length=2)
    input: InputSpec
    architecture: str
    architecture_description: str = ""
    parameters: ParameterCount
    data: DataProvenance
    training: TrainingRun
    validation: ValidationMetrics
    reference: ReferenceResult | None = None
    extra_evaluations: dict[str, float] = Field(
        default_factory=dict, description="other measured figures, e.g. accuracy on rendered digits"
    )
    notes: str = Field("", description="why this architecture, how it compares to the reference")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of model.keras")
    created_at: datetime
    exports: dict[ExportFormat, Export] = Field(
        default_factory=dict, description="model.keras exported for ONNX Runtime / OpenVINO (optional)"
    )
    parity_inputs: ParityInputs | None = Field(None, description="real inputs for the runtime parity gate")
    parity_reference: ParityReference | None = Field(
        None, description="the Keras model's outputs on the gate inputs, to gate runtimes before Keras loads"
    )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
