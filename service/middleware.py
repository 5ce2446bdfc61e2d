"""Pure ASGI middleware: request metrics, API key, body size limit.

Pure ASGI rather than `BaseHTTPMiddleware`: no extra task per request, and the body limit
can wrap `receive` so it holds for chunked bodies too, not just for an honest Content-Length.
"""

from __future__ import annotations

import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, error_response
from service.metrics import Metrics

# Metric label values must stay bounded: a client can send any method token (h11 accepts them all).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware:
    """Counts requests by route template, method and status, and times them."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            # the template (/models/{name}/predict), never the raw path: bounded label values
            label = getattr(route, "path", None) or "<unmatched>"
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self.metrics.observe_request(label, method, status, time.perf_counter() - started)


class ApiKeyMiddleware:
    """Requires `X-API-Key` on every path except the exempt ones (live health, the page files)."""

    def __init__(self, app: ASGIApp, api_key: str, exempt_paths: frozenset[str]) -> None:
        self.app = app
        self._key = api_key.encode()
        self._exempt = exempt_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self._exempt:
            given = next((value for name, value in scope["headers"] if name == b"x-api-key"), b"")
            if not secrets.compare_digest(given, self._key):
                message = "missing X-API-Key header" if not given else "wrong API key"
                await error_response(401, "unauthorized", message, path=scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses bodies over `max_bytes`: from Content-Length at once, else as the bytes arrive."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            error = self._error()
            await error_response(error.status_code, error.code, error.message, path=scope["path"])(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # raised inside the route that reads the body; the error handler renders it
                    raise self._error()
            return message

        await self.app(scope, limited_receive, send)

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body over the {self.max_bytes} byte limit")
