"""Looking inside a model: activations by prediction id or for uploaded images, kernels, Grad-CAM."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from service.api.body import read_images_body
from service.api.deps import InspectorDep, SettingsDep
from service.inspector import ActivationsQuery, Rendered
from service.rendering import NPZ, PNG
from service.schemas import (
    ERROR_RESPONSES,
    PREDICT_REQUEST_BODY,
    ActivationsResponse,
    ErrorBody,
    GradCamResponse,
    KernelsResponse,
)

router = APIRouter(tags=["activations"])

Layers = Annotated[
    str | None,
    Query(
        description="layer names, comma-separated (see `GET /models/{name}`); default: every layer, "
        "the input layer `image` included (its activation is the input itself)",
        examples=["conv1,probabilities"],
    ),
]
Format = Annotated[
    Literal["json", "npz", "png"],
    Query(description="json (default); npz: one float32 array per layer; png: one layer's channels as a grid"),
]
Encoding = Annotated[
    Literal["base64", "list"],
    Query(description="json array data: base64 of little-endian float32 in C order (default), or nested lists"),
]
Layer = Annotated[str | None, Query(description="format=png: the spatial layer to draw (required)")]
Scale = Annotated[
    int | None, Query(ge=1, le=16, description="png: integer upscale of each tile; default: tiles of about 48 px")
]
Version = Annotated[int | None, Query(ge=1, description="model version; default: the newest ready one")]

_BINARY = {"schema": {"type": "string", "format": "binary"}}


def _errors(**descriptions: str) -> dict:
    status = {"bad_request": 400, "unauthorized": 401, "not_found": 404, "too_large": 413, "invalid": 422}
    status |= {"unavailable": 503, "not_probed": 501}
    return {status[key]: {"model": ErrorBody, "description": text} for key, text in descriptions.items()}


_COMMON_ERRORS = {
    "unauthorized": "Missing or wrong X-API-Key (when an API key is configured)",
    "invalid": "A parameter of the wrong type or out of range (format, encoding, scale, version)",
    "not_probed": "The model serves predictions but its layers cannot be probed",
    "unavailable": "The model version is not ready, or too many activations/kernels/Grad-CAM requests are "
    "in progress (Retry-After)",
}
_ACTIVATION_ERRORS = _errors(
    bad_request="Unknown layer (the message lists the valid ones); format=png without `layer`, with a "
    "layer that is not height x width x channels, or for more than one image",
    not_found="Unknown or expired prediction id, or its model version is no longer loaded",
    too_large="The answer would exceed the response byte budget: ask for fewer layers, or use npz",
    **_COMMON_ERRORS,
)


def _activations_doc(uploads: bool = False, **extra: object) -> dict:
    """OpenAPI for the activations routes; `uploads` adds the errors of reading images (413, 415, ...)."""
    return {
        "response_class": JSONResponse,
        "response_model": None,
        "responses": {
            **(ERROR_RESPONSES if uploads else {}),
            200: {
                "model": ActivationsResponse,
                "description": "json: the arrays; npz: one float32 array per layer (shape with batch axis), named "
                "by layer; png: one layer's channels tiled into a grid, each scaled to its own range "
                "(X-Grid-Rows, X-Grid-Columns, X-Scale headers). X-Prediction-Id names the image(s).",
                "content": {NPZ: _BINARY, PNG: _BINARY},
            },
            **_ACTIVATION_ERRORS,
        },
        **extra,
    }


def _send(rendered: Rendered) -> Response:
    return Response(rendered.content, media_type=rendered.media_type, headers=rendered.headers)


def _query(
    layers: str | None, format: Format, encoding: Encoding, layer: str | None, scale: int | None
) -> ActivationsQuery:
    names = [name.strip() for name in layers.split(",") if name.strip()] if layers else []
    return ActivationsQuery(layers=names or None, format=format, encoding=encoding, layer=layer, scale=scale)


@router.get("/activations/{id}", **_activations_doc())
async def activations(
    id: str,
    inspector: InspectorDep,
    layers: Layers = None,
    format: Format = "json",
    encoding: Encoding = "base64",
    layer: Layer = None,
    scale: Scale = None,
) -> Response:
    """The activations of any layers for the image behind an earlier prediction `id`, recomputed on demand."""
    return _send(await inspector.activations(id, _query(layers, format, encoding, layer, scale)))


@router.post(
    "/models/{name}/activations", **_activations_doc(uploads=True, openapi_extra={"requestBody": PREDICT_REQUEST_BODY})
)
async def activations_of_images(
    name: str,
    request: Request,
    inspector: InspectorDep,
    settings: SettingsDep,
    layers: Layers = None,
    format: Format = "json",
    encoding: Encoding = "base64",
    layer: Layer = None,
    scale: Scale = None,
    version: Version = None,
) -> Response:
    """The activations of uploaded images (same bodies as predict), each given a prediction id for later calls."""
    body = await read_images_body(request, settings.max_images_per_request)
    query = _query(layers, format, encoding, layer, scale)
    rendered = await inspector.activations_of_inputs(
        name, body.inputs, version or body.integer("version"), query, request.is_disconnected
    )
    return _send(rendered)


@router.get(
    "/models/{name}/layers/{layer}/kernels",
    response_class=JSONResponse,
    response_model=None,
    responses={
        200: {
            "model": KernelsResponse,
            "description": "json: the kernel (height, width, in, filters) and bias; png: a grid of the kernels, "
            "each filter scaled to its own range: one grey tile per filter for one input channel, one RGB "
            "tile per filter for three, otherwise one row per filter and one tile per input channel",
            "content": {PNG: _BINARY},
        },
        **_errors(
            bad_request="Unknown layer, or not a Conv2D (the message lists the Conv2D layers)",
            not_found="Unknown model or version",
            too_large="The answer would exceed the response byte budget",
            **_COMMON_ERRORS,
        ),
    },
)
async def kernels(
    name: str,
    layer: str,
    inspector: InspectorDep,
    format: Annotated[Literal["png", "json"], Query(description="png (default): a grid image; json: arrays")] = "png",
    encoding: Encoding = "base64",
    scale: Scale = None,
    version: Version = None,
) -> Response:
    """The learned kernels of a Conv2D layer, as a grid image or as arrays with the bias."""
    return _send(await inspector.kernels(name, layer, version, format, encoding, scale))


@router.get(
    "/activations/{id}/gradcam",
    response_class=JSONResponse,
    response_model=None,
    responses={
        200: {
            "model": GradCamResponse,
            "description": "png: the heatmap (jet colours) over the input image; json: the heatmap array",
            "content": {PNG: _BINARY},
        },
        **_errors(
            bad_request="Unknown class or layer, a layer without feature maps, or a model without Conv2D "
            "layers and no `layer` named",
            not_found="Unknown or expired prediction id, or its model version is no longer loaded",
            too_large="The image would exceed the response byte budget",
            **_COMMON_ERRORS,
        ),
    },
)
async def gradcam(
    id: str,
    inspector: InspectorDep,
    label: Annotated[
        str | None, Query(alias="class", description="class label to explain; default: the predicted class")
    ] = None,
    layer: Annotated[str | None, Query(description="a spatial layer; default: the last Conv2D layer")] = None,
    format: Annotated[Literal["png", "json"], Query(description="png (default): overlay; json: the array")] = "png",
    encoding: Encoding = "base64",
    scale: Annotated[
        int | None, Query(ge=1, le=16, description="png: integer upscale of the input; default: about 224 px")
    ] = None,
) -> Response:
    """A Grad-CAM heatmap for an earlier prediction: which regions speak for a class, over a conv layer."""
    return _send(await inspector.gradcam(id, label, layer, format, encoding, scale))
