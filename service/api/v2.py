"""The Open Inference Protocol (KServe/Triton v2) REST API: another door to the same prediction path.

Health, server and model metadata, readiness, and inference. An inference request goes where
`/predict` goes: the registry resolves the version, `image` elements are decoded by
`Predictor.prepare`, the arrays queue in the version's batcher, and layer outputs come from the
activation probe through the `Inspector`, as `/activations` computes them. Errors on these
routes use the protocol's body, `{"error": "..."}` (see `service.errors`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from modelcard import parse_version
from service import oip
from service.api.body import parse_body
from service.errors import ResponseTooLarge, VersionNotFound
from service.registry import ModelVersion

router = APIRouter(prefix="/v2", tags=["open inference protocol"])

SERVER_NAME = "keras-serve"


class ProtocolError(BaseModel):
    """The protocol's error body."""

    error: str


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool
    version: str | None = None


def _errors(**descriptions: str) -> dict:
    status = {"bad_request": 400, "unauthorized": 401, "not_found": 404, "too_large": 413, "unavailable": 503}
    return {status[key]: {"model": ProtocolError, "description": text} for key, text in descriptions.items()}


_UNAUTHORIZED = "Missing or wrong X-API-Key (when an API key is configured)"
_NOT_FOUND = "Unknown model or version"


def _version(name: str, text: str | None) -> int | None:
    if text is None:
        return None
    version = parse_version(text)
    if version is None:
        raise VersionNotFound(f"model {name!r} has no version {text[:40]!r}; versions are positive integers")
    return version


def _outputs(entry: ModelVersion) -> list[str]:
    """Every output name: the two classifier outputs, then each probed layer (a layer named like one is shadowed)."""
    layers = entry.probe.names if entry.probe is not None else []
    return [*oip.CLASS_OUTPUTS, *(name for name in layers if name not in oip.CLASS_OUTPUTS)]


@router.get("", responses=_errors(unauthorized=_UNAUTHORIZED))
async def server_metadata(request: Request) -> JSONResponse:
    """Server metadata: name, version and the protocol extensions supported."""
    return JSONResponse({"name": SERVER_NAME, "version": request.app.version, "extensions": list(oip.EXTENSIONS)})


@router.get("/health/live", response_model=ServerLive)
async def server_live() -> JSONResponse:
    """200 while the process can answer."""
    return JSONResponse({"live": True})


@router.get(
    "/health/ready",
    response_model=ServerReady,
    responses={503: {"model": ServerReady, "description": "Not ready"}, **_errors(unauthorized=_UNAUTHORIZED)},
)
async def server_ready(request: Request) -> JSONResponse:
    """As `/health/ready`: 200 when the replica should take traffic, else 503."""
    ready = request.app.state.registry.all_ready()
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


async def _model_ready(request: Request, name: str, version: str | None) -> JSONResponse:
    registry = request.app.state.registry
    number = _version(name, version)
    versions = registry.versions(name)  # 404 for an unknown model
    if number is None:
        ready = registry.default(name) is not None
    else:
        entry = next((v for v in versions if v.version == number), None)
        if entry is None:
            raise VersionNotFound(f"model {name!r} has no version {number}")
        ready = entry.ready
    body = {"name": name, "ready": ready}
    if version is not None:
        body["version"] = version
    return JSONResponse(body, status_code=200 if ready else 503)


_READY_DOC: dict[str, Any] = {
    "response_model": ModelReady,
    "responses": {
        503: {"model": ModelReady, "description": "Not ready (loading or failed)"},
        **_errors(unauthorized=_UNAUTHORIZED, not_found=_NOT_FOUND),
    },
}
_METADATA_ERRORS = _errors(unauthorized=_UNAUTHORIZED, not_found=_NOT_FOUND, unavailable="The model is not ready")


@router.get("/models/{name}/ready", **_READY_DOC)
async def model_ready(request: Request, name: str) -> JSONResponse:
    """200 when the model has a ready version; 503 while none is; 404 for an unknown model."""
    return await _model_ready(request, name, None)


@router.get("/models/{name}/versions/{version}/ready", **_READY_DOC)
async def model_version_ready(request: Request, name: str, version: str) -> JSONResponse:
    """200 when this version is loaded and warmed; 503 while it is not; 404 when unknown."""
    return await _model_ready(request, name, version)


async def _metadata(request: Request, name: str, version: str | None) -> JSONResponse:
    registry = request.app.state.registry
    entry = await registry.inspectable(registry.resolve(name, _version(name, version)))  # layers are outputs
    spec, card = entry.card.input, entry.card
    layers = entry.probe.layers if entry.probe is not None else {}
    outputs = [
        oip.tensor_metadata(oip.PROBABILITIES, "FP32", [card.num_classes]),
        oip.tensor_metadata(oip.LABEL, "BYTES", []),
        *(oip.tensor_metadata(n, "FP32", layers[n].shape) for n in _outputs(entry)[len(oip.CLASS_OUTPUTS) :]),
    ]
    body = {
        "name": entry.name,
        "versions": [str(v.version) for v in registry.versions(name) if v.ready],
        "platform": "keras",
        "inputs": [
            oip.tensor_metadata(oip.PIXELS, "UINT8", spec.shape),
            oip.tensor_metadata(oip.IMAGE, "BYTES", []),
        ],
        "outputs": outputs,
    }
    return JSONResponse(body)


@router.get("/models/{name}", responses=_METADATA_ERRORS)
async def model_metadata(request: Request, name: str) -> JSONResponse:
    """Model metadata: inputs `pixels` (UINT8 or FP32) and `image` (BYTES); outputs, each layer included."""
    return await _metadata(request, name, None)


@router.get("/models/{name}/versions/{version}", responses=_METADATA_ERRORS)
async def model_version_metadata(request: Request, name: str, version: str) -> JSONResponse:
    """Metadata of one version of a model."""
    return await _metadata(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    state = request.app.state
    started = time.perf_counter()
    entry = state.registry.resolve(name, _version(name, version))
    if not entry.inspectable.is_set():  # layers are outputs too: they are known once the Keras model is loaded
        entry = await state.registry.inspectable(entry)
    body = await request.body()
    arguments = (
        body,
        request.headers.get(oip.HEADER_LENGTH),
        entry.card.input,
        _outputs(entry),
    )
    options = {"num_classes": entry.card.num_classes, "max_images": state.settings.max_images_per_request}
    parsed = await parse_body(len(body), oip.parse_request, *arguments, **options)

    if parsed.images is not None:
        arrays = await state.predictor.prepare(parsed.images, entry.card.input)
    else:
        assert parsed.pixels is not None  # a request holds images or pixels
        arrays = list(parsed.pixels)
    wanted = {output.name for output in parsed.outputs}
    probabilities = None
    if wanted & set(oip.CLASS_OUTPUTS):
        probabilities = await entry.batcher.submit(arrays)
        state.metrics.observe_prediction(entry.name, entry.version, len(arrays), time.perf_counter() - started)
    layers = [name for name in wanted if name not in oip.CLASS_OUTPUTS]
    activations = {}
    if layers:
        batch = parsed.pixels if parsed.pixels is not None else np.stack(arrays).astype(np.float32)
        activations = await state.inspector.layer_outputs(entry, batch, layers)

    labels = entry.card.class_names
    tensors = []
    for output in parsed.outputs:
        if output.classification is not None:
            assert probabilities is not None  # classification is accepted on `probabilities` only
            data = oip.classification(probabilities, output.classification, labels)
            tensors.append(
                oip.OutputTensor(output.name, "BYTES", (len(arrays), output.classification), data, output.binary)
            )
        elif output.name == oip.PROBABILITIES:
            assert probabilities is not None  # computed above whenever a class output is asked for
            tensors.append(oip.OutputTensor(output.name, "FP32", probabilities.shape, probabilities, output.binary))
        elif output.name == oip.LABEL:
            assert probabilities is not None
            data = [labels[i].encode() for i in np.argmax(probabilities, axis=1).tolist()]
            tensors.append(oip.OutputTensor(output.name, "BYTES", (len(data),), data, output.binary))
        else:
            array = activations[output.name]
            tensors.append(oip.OutputTensor(output.name, "FP32", array.shape, array, output.binary))
    if layers:  # activations can be large: encode them off the event loop, within the byte budget
        content, header_length = await run_in_threadpool(
            oip.encode_response, entry.name, entry.version, parsed.id, tensors
        )
        limit = state.settings.max_activation_response_bytes
        if len(content) > limit:
            raise ResponseTooLarge(
                f"the response would take {len(content):,} bytes, over the {limit:,} byte limit; "
                "ask for fewer layers or images, or binary outputs"
            )
    else:
        content, header_length = oip.encode_response(entry.name, entry.version, parsed.id, tensors)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={oip.HEADER_LENGTH: str(header_length)})


_INFER_DOC: dict[str, Any] = {
    "response_class": Response,
    "responses": {
        200: {
            "description": "A v2 inference response: JSON, or (when binary outputs were asked for) a JSON header "
            "of Inference-Header-Content-Length bytes followed by the binary tensors",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **_errors(
            bad_request="Malformed request: wrong input name, datatype, shape or size, bad binary framing, "
            "unknown output, undecodable image",
            unauthorized=_UNAUTHORIZED,
            not_found=_NOT_FOUND,
            too_large="Body over the size limit, or more images than allowed per request",
            unavailable="The model is not ready, or its queue is full (Retry-After)",
        ),
    },
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "description": "A v2 inference request: JSON, or a JSON header of Inference-Header-Content-Length "
            "bytes followed by binary tensor data",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
}


@router.post("/models/{name}/infer", **_INFER_DOC)
async def infer(request: Request, name: str) -> Response:
    """Run inference with the newest ready version: one input (`pixels` or `image`), any outputs."""
    return await _infer(request, name, None)


@router.post("/models/{name}/versions/{version}/infer", **_INFER_DOC)
async def infer_version(request: Request, name: str, version: str) -> Response:
    """Run inference with one version of a model."""
    return await _infer(request, name, version)
