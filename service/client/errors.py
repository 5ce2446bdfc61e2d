"""Typed exceptions for the service's one error body: `{"error": {"code": "...", "message": "..."}}`.

Every error carries the HTTP status, the server's machine-readable `code` and its
`message`; the class says what kind of failure it is, so callers catch what they can act on
(`except NotFound`, `except PayloadTooLarge`) and read `code` for the finer reason
(`model_not_found` vs `version_not_found`, `invalid_image` vs `bad_request`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx


class ServiceError(Exception):
    """An error answered by the service (or a failure to reach it).

    Attributes:
        status_code: the HTTP status; None when no response arrived.
        code: the server's error code, e.g. "model_not_found", "queue_full".
        message: the server's message.
        retry_after: seconds from the `Retry-After` header, when the server sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status_code or 'no response'} {code}: {message}")
        self.message = message
        self.code = code
        self.status_code = status_code
        self.retry_after = retry_after


class ServiceConnectionError(ServiceError):
    """The service could not be reached, or the connection failed mid-request (after retries)."""


class BadRequest(ServiceError):
    """400: the request was understood but refused, e.g. a corrupt image (`invalid_image`)."""


class Unauthorized(ServiceError):
    """401: missing or wrong API key."""


class Forbidden(ServiceError):
    """403."""


class NotFound(ServiceError):
    """404: unknown model, version, prediction id or route."""


class PayloadTooLarge(ServiceError):
    """413: body too big, too many images, too many pixels, or a response over budget."""


class UnsupportedMediaType(ServiceError):
    """415: an image format the service does not decode."""


class InvalidInput(ServiceError):
    """422: well-formed HTTP with the wrong content (array shape, NaN, bad JSON)."""


class TooManyRequests(ServiceError):
    """429."""


class Unavailable(ServiceError):
    """503: model not ready, or the queue is full (then `retry_after` is set)."""


class ServerError(ServiceError):
    """Any other 5xx from the service."""


class GatewayError(ServiceError):
    """502 or 504: a proxy in front of the service got no answer (in time) from it: the service
    is down, or the request took longer than the proxy waits. Retried like a 503; then a scoring
    run halves the batch, and ends when one image still gets it."""


_BY_STATUS: dict[int, type[ServiceError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidInput,
    429: TooManyRequests,
    502: GatewayError,
    503: Unavailable,
    504: GatewayError,
}

# Refusals that concern the images of a request (a batch may hold one bad image among good ones).
IMAGE_ERRORS: tuple[type[ServiceError], ...] = (BadRequest, PayloadTooLarge, UnsupportedMediaType, InvalidInput)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_from_response(response: httpx.Response) -> ServiceError:
    """The typed exception for a non-2xx response, reading the service's error body."""
    status = response.status_code
    code, message = f"http_{status}", response.reason_phrase or "error"
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = str(error.get("code") or code)
            message = str(error.get("message") or message)
        elif isinstance(body, dict) and "detail" in body:
            message = str(body["detail"])[:500]
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        text = response.text.strip() if response.content else ""
        if text:
            message = text[:500]
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ServiceError)
    return cls(
        message,
        code=code,
        status_code=status,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )
