"""Request and response shapes, as documented in the OpenAPI schema.

Prediction bodies are parsed by hand (`service.api.body`) so that a bad multi-megabyte body is
never echoed back in a validation error; their OpenAPI description lives here as plain schema.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from modelcard import InputSpec, ModelCard

State = Literal["loading", "ready", "failed"]


class ErrorDetail(BaseModel):
    code: str = Field(examples=["model_not_found"])
    message: str = Field(examples=["unknown model 'digitz'; known: digits, fruits"])


class ErrorBody(BaseModel):
    error: ErrorDetail


class TopClass(BaseModel):
    label: str
    index: int
    confidence: float


class Prediction(BaseModel):
    id: str = Field(description="names this prediction for the activations API", examples=["3f2a9c0e8b7d4e51"])
    label: str = Field(examples=["7"])
    index: int = Field(examples=[7])
    confidence: float = Field(examples=[0.998])
    probabilities: dict[str, float] = Field(description="every class label -> probability")
    top_k: list[TopClass] = Field(description="the best classes, most probable first")


class PredictResponse(BaseModel):
    model: str = Field(examples=["digits"])
    version: int = Field(examples=[1])
    predictions: list[Prediction] = Field(description="one per input image, in request order")


class VersionStatus(BaseModel):
    version: int
    state: State
    reason: str | None = Field(None, description="why loading failed")
    keras_loaded: bool = Field(
        False,
        description="its Keras model is loaded: layers, activations, kernels and Grad-CAM answer without waiting "
        "(a version can serve predictions before)",
    )


class ModelStatus(BaseModel):
    state: State = Field(description="ready: every version loaded; failed if any failed; else loading")
    default_version: int | None = Field(description="newest ready version: what requests without `version` use")
    versions: list[VersionStatus]


class Liveness(BaseModel):
    status: Literal["alive"] = "alive"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    reason: str | None = None
    models: dict[str, ModelStatus]
    background_work: int = Field(
        0, description="Keras model loads and activation warm-ups still running after their versions turned ready"
    )


class ModelSummary(BaseModel):
    name: str
    state: State
    default_version: int | None
    versions: list[VersionStatus]
    class_names: list[str] = Field(description="labels, in output order (from the newest card read)")
    input: InputSpec | None


class ModelList(BaseModel):
    models: list[ModelSummary]


class Layer(BaseModel):
    name: str = Field(examples=["conv1"])
    type: str = Field(examples=["Conv2D"])
    output_shape: list[int | None] = Field(examples=[[None, 26, 26, 32]])
    parameters: int = Field(examples=[320])


class RuntimeCandidate(BaseModel):
    runtime: str = Field(examples=["openvino"])
    precision: str = Field(examples=["f32"])
    state: Literal["in use", "accepted", "refused", "not tried"]
    reason: str | None = Field(description="why refused, the gate's verdict, or the cached decision that skipped it")
    artifact: str | None = Field(None, description="where its files came from: store, cache, exported at load")
    max_abs_diff: float | None = Field(None, description="largest probability difference from Keras on the gate")
    gate_inputs: int | None = None
    timings_ms: dict[int, float] = Field(default_factory=dict, description="batch size -> median ms per call")


class RuntimeInfo(BaseModel):
    in_use: str = Field(description="the runtime answering /predict for this version", examples=["openvino"])
    precision: str = Field(examples=["f32"])
    requested: str = Field(description="INFERENCE_RUNTIME", examples=["auto"])
    decided_by: str
    candidates: list[RuntimeCandidate]


class ModelDetail(BaseModel):
    name: str
    version: int = Field(description="the version described (the default unless `version` was asked for)")
    state: State
    versions: list[VersionStatus]
    card: ModelCard
    layers: list[Layer] = Field(description="in model order; names usable with the activations API")
    runtime: RuntimeInfo | None = Field(None, description="the runtime serving predictions and how it was chosen")


class EncodedArray(BaseModel):
    shape: list[int] = Field(examples=[[1, 26, 26, 32]])
    dtype: Literal["float32"] = "float32"
    encoding: Literal["base64", "list"] = Field(
        description="base64: the raw little-endian float32 bytes in C (row-major) order; list: nested lists"
    )
    data: str | list = Field(description="the values, as `encoding` says")


class LayerActivation(EncodedArray):
    name: str = Field(examples=["conv1"])
    type: str = Field(examples=["Conv2D"])


class ActivationsResponse(BaseModel):
    model: str = Field(examples=["digits"])
    version: int = Field(examples=[1])
    id: str | None = Field(description="the prediction id, when the answer is for one image")
    ids: list[str] = Field(description="every image's prediction id, in batch order")
    layers: list[LayerActivation] = Field(
        description="in the order asked for (model order by default); each array has a leading batch axis"
    )


class KernelsResponse(BaseModel):
    model: str
    version: int
    layer: str = Field(examples=["conv1"])
    type: str = Field(examples=["Conv2D"])
    kernel: EncodedArray = Field(description="(kernel height, kernel width, input channels, filters)")
    bias: EncodedArray | None = Field(description="(filters,), or null for a layer without bias")


class GradCamResponse(BaseModel):
    model: str
    version: int
    id: str
    layer: str = Field(description="the layer whose feature maps were weighted", examples=["conv2"])
    label: str = Field(description="the class explained", examples=["7"])
    index: int
    probability: float = Field(description="the model's probability for that class")
    peak: float = Field(description="the heatmap's maximum before scaling; 0: no evidence for the class in the layer")
    heatmap: EncodedArray = Field(description="(height, width) at the layer's resolution, scaled to [0, 1]")


ERROR_RESPONSES = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "Not an image, or a truncated or corrupt one; malformed body",
        401: "Missing or wrong X-API-Key (when an API key is configured)",
        404: "Unknown model or version",
        413: "Body too large, too many images, or an image with too many pixels",
        415: "Unsupported image format or content type",
        422: "Wrong JSON, pixel arrays of the wrong shape, NaN/inf or out of range, bad parameters",
        503: "Model not ready, or queue full (with Retry-After)",
    }.items()
}

_TINY_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="

PREDICT_REQUEST_BODY = {
    "required": True,
    "description": (
        "Images as multipart `file` parts (a batch), or JSON `instances`: base64 image files "
        '(`{"b64": ...}`) or pixel arrays in the model\'s input shape (height x width x channels, '
        "or height x width for one-channel models), raw values within 0..255. `top_k`, `version` "
        "(and `model` for `/predict`) may also be given as form fields or JSON keys."
    ),
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1},
                    "model": {"type": "string", "description": "model name (POST /predict only)"},
                    "top_k": {"type": "integer", "minimum": 1},
                    "version": {"type": "integer", "minimum": 1},
                },
                "required": ["file"],
            },
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "instances": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "oneOf": [
                                {
                                    "type": "object",
                                    "properties": {"b64": {"type": "string", "format": "byte"}},
                                    "required": ["b64"],
                                },
                                {"type": "array", "description": "pixel array, nested lists of numbers"},
                            ]
                        },
                    },
                    "model": {"type": "string"},
                    "top_k": {"type": "integer", "minimum": 1},
                    "version": {"type": "integer", "minimum": 1},
                },
                "required": ["instances"],
            },
            "examples": {
                "base64": {
                    "summary": "one PNG file, base64-encoded",
                    "value": {"instances": [{"b64": _TINY_PNG}], "top_k": 3},
                },
                "pixels": {
                    "summary": "one 2x2 grey pixel array (a real model takes its own input size)",
                    "value": {"instances": [[[0, 255], [255, 0]]]},
                },
            },
        },
    },
}
