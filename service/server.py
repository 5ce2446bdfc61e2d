"""The HTTP server: uvicorn with httptools, and the limits a production server has.

uvicorn's httptools protocol bounds neither the size of a request's headers (a 64 MiB header
line took 4-5 s to refuse, quadratically, stalling every other connection meanwhile) nor the
time a client may take to send them. `GuardedHttpToolsProtocol` adds, per connection:

- a cap on the request line + headers (`MAX_HEADER_BYTES`) and on their count (`MAX_HEADERS`):
  431, checked as the bytes arrive, so at most one read (<= 256 KiB) past the limit is parsed;
- a deadline for the request line + headers (`HEADER_TIMEOUT_SECONDS`), from the connection
  or from the first byte of the next request on a kept-alive one: 408 (slowloris);
- a cap on open connections (`MAX_CONNECTIONS`): a connection over it gets 503 at once.

An error answer is sent with `Connection: close`, then the connection is half-closed and what
the client is still sending is read and dropped for up to a second (a lingering close, as
nginx does), so the client gets to read the answer instead of a reset. Idle keep-alive
connections are closed by uvicorn (`KEEP_ALIVE_TIMEOUT_SECONDS`); the body timeout is enforced
by the app while it reads a body (`service.middleware.BodyLimitMiddleware`), where it can
answer with the usual error body and count the 408 in /metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.config import Settings
from service.errors import error_body

log = logging.getLogger(__name__)

_LINGER_SECONDS = 1.0
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout_seconds: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            settings.max_header_bytes, settings.max_headers, settings.header_timeout_seconds, settings.max_connections
        )


class _HeadTooLarge(Exception):
    """Raised inside the parser's callback to stop parsing a request whose headers are over the limits."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header size/count limits, a header deadline and a connection cap."""

    # Set by `configure` in the process that calls uvicorn.run; worker processes read the environment.
    limits: ClassVar[HttpLimits | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if GuardedHttpToolsProtocol.limits is None:
            GuardedHttpToolsProtocol.limits = HttpLimits.from_settings(Settings())
        self._limits = GuardedHttpToolsProtocol.limits
        self._reading_head = True  # between requests, or inside a request's line and headers
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    # -------------------------------------------------------------------------------- connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            log.warning("over %d open connections: refusing one", self._limits.max_connections)
            self._refuse(503, "unavailable", "too many open connections; retry shortly", b"retry-after: 1\r\n")
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the answer is out: drop what the client still sends until the close
        self._unset_keepalive_if_required()
        if self._reading_head:
            self._head_bytes += len(data)
            if self._head_timer is None:
                self._arm_head_timer()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _HeadTooLarge):
                self._refuse_head()
                return
            self._invalid_request()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():  # as uvicorn does
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            self._invalid_request()
            return
        if self._reading_head and self._head_bytes > self._limits.max_header_bytes:
            self._refuse_head()

    # -------------------------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if len(self.headers) > self._limits.max_headers or size > self._limits.max_header_bytes:
            raise _HeadTooLarge
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True  # what comes next is the next request's head

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._head_bytes = 0

    # -------------------------------------------------------------------------------- refusals

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self._limits.header_timeout_seconds, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._reading_head:
            return
        if self._head_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # nothing sent at all: close quietly, as for an idle keep-alive
            return
        log.info("request headers not received within %g s: closing", self._limits.header_timeout_seconds)
        self._refuse(408, "request_timeout", f"headers not received within {self._limits.header_timeout_seconds:g} s")

    def _refuse_head(self) -> None:
        limits = self._limits
        log.info("request headers over %d bytes or %d fields: refused", limits.max_header_bytes, limits.max_headers)
        message = f"request headers over {limits.max_header_bytes} bytes or {limits.max_headers} fields"
        self._refuse(431, "headers_too_large", message)

    def _invalid_request(self) -> None:
        self.logger.info("invalid HTTP request received")
        self._refuse(400, "bad_request", "invalid HTTP request")

    def _refuse(self, status: int, code: str, message: str, extra_headers: bytes = b"") -> None:
        """Answer `status` with the usual error body, then close the connection (lingering)."""
        self._refused = True
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        if self.cycle is not None and not self.cycle.response_complete:
            # a request of this connection is in the app: its answer can no longer go out
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        if self.transport.is_closing():
            return
        body = json.dumps(error_body(code, message)).encode()
        reason = _REASONS.get(status, b"Bad Request")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n%s\r\n%s"
            % (status, reason, len(body), extra_headers, body)
        )
        self.flow.resume_reading()  # keep draining, even if reading was paused
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(_LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()


def configure(settings: Settings) -> None:
    """Use `settings`' limits in this process (worker processes read them from the environment)."""
    GuardedHttpToolsProtocol.limits = HttpLimits.from_settings(settings)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments for `uvicorn.run` that set the server up as described above."""
    configure(settings)
    return {
        "host": settings.host,
        "port": settings.port,
        "http": GuardedHttpToolsProtocol,
        "log_level": settings.log_level.lower(),
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": settings.graceful_shutdown_seconds,
        "timeout_keep_alive": settings.keep_alive_timeout_seconds,
        "server_header": False,
    }
