"""Predictions: POST /models/{name}/predict and POST /predict?model=NAME."""

from __future__ import annotations

from typing import Any

import pydantic_core
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api.body import ImagesBody, read_images_body
from service.errors import InvalidInput
from service.schemas import ERROR_RESPONSES, PREDICT_REQUEST_BODY, PredictResponse

router = APIRouter(tags=["predict"])


class PredictionJSON(JSONResponse):
    """A prediction body, encoded by pydantic-core's serialiser (Rust) rather than `json.dumps`.

    The same JSON (floats in their shortest round-trip form), at a quarter of the cost on a
    60-class body: about 25 against 100 us here. The body holds only str, int, float, list and
    dict, and the batcher refuses non-finite probabilities before they get here.
    """

    def render(self, content: Any) -> bytes:
        return pydantic_core.to_json(content)


def _query(name: str, description: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_TOP_K = _query("top_k", "how many best classes to list (default 5)", {"type": "integer", "minimum": 1})
_VERSION = _query("version", "model version; default: the newest ready one", {"type": "integer", "minimum": 1})
_MODEL = _query("model", "model name (or a `model` form field or JSON key)", {"type": "string"})


def _doc(*parameters: dict) -> dict:
    return {
        "response_model": PredictResponse,
        "responses": ERROR_RESPONSES,
        "openapi_extra": {"requestBody": PREDICT_REQUEST_BODY, "parameters": list(parameters)},
    }


# The hot path reads its query parameters and app state by hand and returns a JSONResponse
# built from plain dicts: FastAPI's parameter validation, dependency injection and response
# model validation each cost more per request than a small model's call.
def _positive_int(request: Request, body: ImagesBody, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return body.integer(name)
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"query parameter {name} must be a positive integer") from None
    if value < 1:
        raise InvalidInput(f"query parameter {name} must be a positive integer")
    return value


async def _predict(request: Request, name: str | None) -> PredictionJSON:
    state = request.app.state
    body = await read_images_body(request, state.settings.max_images_per_request)
    name = name or request.query_params.get("model") or body.fields.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidInput("name the model: ?model=NAME, or a `model` form field or JSON key")
    result = await state.predictor.predict(
        name,
        body.inputs,
        version=_positive_int(request, body, "version"),
        top_k=_positive_int(request, body, "top_k"),
        gone=request.is_disconnected,
    )
    return PredictionJSON(result)


@router.post("/models/{name}/predict", **_doc(_TOP_K, _VERSION))
async def predict_with_model(name: str, request: Request) -> PredictionJSON:
    """Classify one or more images (multipart files, base64 or pixel arrays) with model `name`."""
    return await _predict(request, name)


@router.post("/predict", **_doc(_MODEL, _TOP_K, _VERSION))
async def predict(request: Request) -> PredictionJSON:
    """Classify images with the model named by the `model` query parameter, form field or JSON key."""
    return await _predict(request, None)
