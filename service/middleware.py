"""Pure ASGI middleware: request metrics, API key, body size limit and body timeout.

Pure ASGI rather than `BaseHTTPMiddleware`: no extra task per request, and the body limit
can wrap `receive` so it holds for chunked bodies too, not just for an honest Content-Length.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, RequestTimeout, Unauthorized, render
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
                error = Unauthorized("missing X-API-Key header" if not given else "wrong API key")
                await render(error, path=scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses bodies over `max_bytes` (from Content-Length at once, else as the bytes arrive) and
    bodies that take over `timeout_seconds` to arrive once the headers are in (a Content-Length
    larger than what is sent, a trickle): 408, and the connection is closed."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_seconds: float = 60.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:  # bytes: ASCII digits only
            error = self._error()
            await render(error, path=scope["path"])(scope, receive, send)
            return
        received = 0
        deadline = asyncio.get_running_loop().time() + self.timeout_seconds

        async def limited_receive() -> Message:
            nonlocal received
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                # raised inside the route that reads the body, like the size limit below
                raise RequestTimeout(f"request body not received within {self.timeout_seconds:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # raised inside the route that reads the body; the error handler renders it
                    raise self._error()
            return message

        await self.app(scope, limited_receive, send)

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body over the {self.max_bytes} byte limit")
