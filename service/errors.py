"""Domain errors and the one JSON error body: `{"error": {"code": "...", "message": "..."}}`.

Code below the HTTP layer raises a `ServiceError` subclass; `install_error_handlers` renders
those, FastAPI's validation errors and Starlette's HTTP errors (404, 405, ...) the same
way, never with a traceback, a file path or a large piece of the request in the message.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)

_MAX_MESSAGE = 500


class ServiceError(Exception):
    """An error a client can act on; `status_code` and `code` say which."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    status_code, code = 400, "bad_request"


class InvalidImage(ServiceError):
    """Not an image, or a truncated or corrupt one."""

    status_code, code = 400, "invalid_image"


class Unauthorized(ServiceError):
    status_code, code = 401, "unauthorized"


class ModelNotFound(ServiceError):
    status_code, code = 404, "model_not_found"


class VersionNotFound(ServiceError):
    status_code, code = 404, "version_not_found"


class NotFound(ServiceError):
    status_code, code = 404, "not_found"


class PredictionNotFound(ServiceError):
    """A prediction id never issued, expired, evicted, or whose model version is gone."""

    status_code, code = 404, "prediction_not_found"


class RequestTimeout(ServiceError):
    """The client took longer than allowed to send its body; the connection is closed after the answer."""

    status_code, code = 408, "request_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class UnknownLayer(ServiceError):
    status_code, code = 400, "unknown_layer"


class UnsuitableLayer(ServiceError):
    """A real layer that cannot serve the request: not spatial for a grid or Grad-CAM, not a Conv2D for kernels."""

    status_code, code = 400, "unsuitable_layer"


class PayloadTooLarge(ServiceError):
    status_code, code = 413, "payload_too_large"


class ResponseTooLarge(ServiceError):
    """An answer (activations, kernels, an image) over the configured response byte budget."""

    status_code, code = 413, "response_too_large"


class TooManyImages(ServiceError):
    status_code, code = 413, "too_many_images"


class ImageTooLarge(ServiceError):
    """More pixels than allowed: refused from the header, before decoding (decompression bombs)."""

    status_code, code = 413, "image_too_large"


class UnsupportedFormat(ServiceError):
    status_code, code = 415, "unsupported_format"


class InvalidInput(ServiceError):
    """Well-formed HTTP, wrong content: bad JSON, wrong array shape, NaN, out of range."""

    status_code, code = 422, "invalid_input"


class ModelNotReady(ServiceError):
    """Not servable now: loading (with a `Retry-After` hint), or failed (none: waiting will not help)."""

    status_code, code = 503, "model_not_ready"

    def __init__(self, message: str, retry_after_seconds: int | None = None) -> None:
        super().__init__(
            message, headers=None if retry_after_seconds is None else {"Retry-After": str(retry_after_seconds)}
        )


class QueueFull(ServiceError):
    status_code, code = 503, "queue_full"

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_seconds)})


class ClientGone(ServiceError):
    """The client hung up before its request was read or its answer was ready: work for it stops,
    and nobody reads the answer. 499 is nginx's "client closed request": counted in /metrics as
    the client's doing, not as a 500.
    """

    status_code, code = 499, "client_closed_request"


class InferenceFailed(ServiceError):
    status_code, code = 500, "inference_failed"


class ActivationsUnavailable(ServiceError):
    """The model serves predictions, but its layers could not be probed (see the server log)."""

    status_code, code = 501, "activations_unavailable"


def error_body(code: str, message: str) -> dict:
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    return {"error": {"code": code, "message": message}}


# The Open Inference Protocol's routes answer errors in its own body, `{"error": "..."}`, and
# with its statuses: a client mistake is a 400 there (this API's 415 and 422 become 400).
PROTOCOL_PREFIX = "/v2"
_PROTOCOL_KEEPS = frozenset({400, 401, 404, 405, 408, 413, 499, 503})


def is_protocol_path(path: str | None) -> bool:
    return path is not None and (path == PROTOCOL_PREFIX or path.startswith(PROTOCOL_PREFIX + "/"))


def error_response(
    status_code: int, code: str, message: str, headers: dict[str, str] | None = None, path: str | None = None
) -> JSONResponse:
    """The error body for a request to `path`: the protocol's on /v2 routes, this API's elsewhere."""
    if is_protocol_path(path):
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 3] + "..."
        if 400 <= status_code < 500 and status_code not in _PROTOCOL_KEEPS:
            status_code = 400
        return JSONResponse({"error": message}, status_code=status_code, headers=headers)
    return JSONResponse(error_body(code, message), status_code=status_code, headers=headers)


def render(error: ServiceError, path: str | None = None) -> JSONResponse:
    return error_response(error.status_code, error.code, error.message, error.headers, path)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
    503: "unavailable",
}


def _describe_validation(error: RequestValidationError) -> str:
    # Only where and what: pydantic's "input" would echo the request back.
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item.get("loc", ()))
        parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else str(item.get("msg", "invalid")))
    more = len(error.errors()) - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Render every error the app can produce in the one error body."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, error: ServiceError) -> JSONResponse:
        return render(error, request.url.path)

    @app.exception_handler(ClientDisconnect)
    async def _client_disconnected(request: Request, error: ClientDisconnect) -> JSONResponse:
        # one short line, no traceback: a client hanging up mid-upload is not our failure
        log.info("client disconnected before its request was read: %s %s", request.method, request.url.path[:200])
        return render(ClientGone("the client closed the connection"), request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_input", _describe_validation(error), path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(error.status_code, "http_error")
        if error.status_code == 404 and error.detail == "Not Found":
            message = f"no route {request.method} {request.url.path[:200]}"
        elif error.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path[:200]}"
        else:
            message = str(error.detail)
        return error_response(error.status_code, code, message, getattr(error, "headers", None), request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; see the server log", path=request.url.path)
