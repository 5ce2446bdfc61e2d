"""`Client` and `AsyncClient`: the service's HTTP API as Python calls, on httpx.

Everything about a call except the I/O lives in one core that sends nothing and never
sleeps: `_Calls` describes each API call (method, path, body, how to read the answer) and
`_Attempts` decides, after each answer or transport failure, whether the call is done,
should be sent again after a wait (backoff, or the server's `Retry-After`), or has failed
with a typed error. The two clients are thin shells around it: one sends with
`httpx.Client` and waits with `time.sleep`, the other with `httpx.AsyncClient` and
`asyncio.sleep`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlsplit

import httpx
import numpy as np

from service.client.errors import ServiceConnectionError, ServiceError, error_from_response
from service.client.payloads import Body, ImageInput, as_list, build_body
from service.client.results import Health, ModelInfo, PredictResult

DEFAULT_TIMEOUT = 30.0
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Connection failures and timeouts: worth another try (a prediction changes nothing on the server).
RETRY_EXCEPTIONS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
MAX_RETRY_AFTER = 300.0

T = TypeVar("T")
Images = ImageInput | Sequence[ImageInput]  # one image or a batch


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before sending a request again.

    Attributes:
        retries: extra attempts after the first (0 disables retrying).
        backoff: the first wait in seconds; each further wait doubles it, with jitter.
        max_backoff: the longest computed wait (a server's `Retry-After` is honoured as sent).
    """

    retries: int = 3
    backoff: float = 0.25
    max_backoff: float = 10.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number `attempt` (0-based)."""
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER)
        base = min(self.backoff * (2**attempt), self.max_backoff)
        return base * (0.5 + random.random() / 2)


# --------------------------------------------------------------------------- the I/O-free core


@dataclass(frozen=True)
class _Request:
    """What to send: the shells pass it to `httpx.Client.request` / `httpx.AsyncClient.request`."""

    method: str
    path: str
    options: dict[str, Any]


@dataclass
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    body: Body | None = None
    accept: frozenset[int] = frozenset()  # non-2xx statuses that are an answer, not an error

    def request(self) -> _Request:
        options: dict[str, Any] = {"params": {k: v for k, v in self.params.items() if v is not None}}
        if self.body is not None:
            options.update(self.body.request_kwargs())
        return _Request(self.method, self.path, options)


@dataclass(frozen=True)
class _Done(Generic[T]):
    """The call is over: `value` is its parsed answer."""

    value: T


@dataclass(frozen=True)
class _Wait:
    """Send the request again after `seconds`."""

    seconds: float


class _Attempts(Generic[T]):
    """One call and its retries, as decisions: what to send, and what each reply means.

    Args:
        call: the API call.
        policy: how often and after how long to try again.
    """

    def __init__(self, call: _Call[T], policy: RetryPolicy) -> None:
        self.call = call
        self.policy = policy
        self.request = call.request()  # the same request for every attempt
        self.attempt = 0  # failed attempts so far

    def after(self, reply: httpx.Response | Exception) -> _Done[T] | _Wait:
        """What `reply` (a response, or the transport error the send raised) means for the call.

        Returns:
            `_Done` with the parsed answer, or `_Wait`: sleep, then send `request` again.

        Raises:
            ServiceError: the typed error, when the reply is not retryable or retries are spent
                (`ServiceConnectionError` for a transport failure).
        """
        if isinstance(reply, Exception):
            error: ServiceError = ServiceConnectionError(f"{type(reply).__name__}: {reply}", code="connection_error")
            error.__cause__ = reply
            return self._again(error)
        if reply.is_success or reply.status_code in self.call.accept:
            try:
                return _Done(self.call.parse(reply))
            except (ValueError, KeyError, TypeError) as exc:  # not JSON, or not the service's (a portal, a proxy)
                body = reply.text[:200].strip() if reply.content else "(empty)"
                raise ServiceError(
                    f"the answer to {self.request.path} is not the service's ({type(exc).__name__}): {body}",
                    code="invalid_response",
                    status_code=reply.status_code,
                ) from exc
        error = error_from_response(reply)
        if reply.status_code not in RETRY_STATUSES:
            raise error
        return self._again(error)

    def _again(self, error: ServiceError) -> _Wait:
        if self.attempt >= self.policy.retries:
            raise error
        wait = self.policy.delay(self.attempt, error.retry_after)
        self.attempt += 1
        return _Wait(wait)


def service_url(url: str) -> str:
    """`url` without a trailing slash, checked: an http(s) URL with a host.

    Raises:
        ValueError: anything else (`localhost:8000` would be read as the scheme "localhost").
    """
    parts = urlsplit(url.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the service URL must look like http://host:port, not {url!r}")
    return url.rstrip("/")


def _segment(value: str) -> str:
    return quote(str(value), safe="")


def _parse_models(response: httpx.Response) -> list[ModelInfo]:
    data = response.json()
    items = data.get("models", []) if isinstance(data, dict) else data
    if isinstance(items, dict):  # {"digits": {...}, ...}
        items = [{"name": name, **info} for name, info in items.items()]
    return [ModelInfo.from_json(item) for item in items]


def _parse_health(response: httpx.Response) -> Health:
    try:
        data = response.json()
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {"body": data}
    return Health(
        ready=response.status_code == 200,
        status_code=response.status_code,
        models=data.get("models"),
        raw=data,
    )


def _parse_activations(response: httpx.Response) -> dict[str, np.ndarray]:
    content_type = response.headers.get("content-type", "")
    if "json" not in content_type:
        with np.load(io.BytesIO(response.content), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    arrays = {}
    for layer in response.json().get("layers", []):
        shape = tuple(int(d) for d in layer.get("shape", ()))
        dtype = np.dtype(layer.get("dtype", "float32")).newbyteorder("<")
        if layer.get("encoding", "base64") == "base64":
            array = np.frombuffer(base64.b64decode(layer["data"]), dtype=dtype).reshape(shape)
        else:
            array = np.asarray(layer["data"], dtype=dtype).reshape(shape)
        arrays[str(layer["name"])] = array.astype(dtype.newbyteorder("="), copy=False)
    return arrays


class _Calls:
    """Each API call as a `_Call`: what to send and how to read the answer."""

    @staticmethod
    def health() -> _Call[Health]:
        return _Call("GET", "/health/ready", _parse_health, accept=frozenset({503}))

    @staticmethod
    def models() -> _Call[list[ModelInfo]]:
        return _Call("GET", "/models", _parse_models)

    @staticmethod
    def model(name: str, version: int | None) -> _Call[ModelInfo]:
        return _Call(
            "GET", f"/models/{_segment(name)}", lambda r: ModelInfo.from_json(r.json()), params={"version": version}
        )

    @staticmethod
    def predict(model: str, body: Body, top_k: int | None, version: int | None) -> _Call[PredictResult]:
        return _Call(
            "POST",
            f"/models/{_segment(model)}/predict",
            lambda r: PredictResult.from_json(r.json()),
            params={"top_k": top_k, "version": version},
            body=body,
        )

    @staticmethod
    def activations(
        prediction_id: str, layers: Sequence[str] | str | None, format: str
    ) -> _Call[dict[str, np.ndarray]]:
        if format not in ("npz", "json"):
            raise ValueError(f"format must be 'npz' or 'json' to return arrays; got {format!r}")
        if layers is not None and not isinstance(layers, str):
            layers = ",".join(layers)
        return _Call(
            "GET",
            f"/activations/{_segment(prediction_id)}",
            _parse_activations,
            params={"layers": layers or None, "format": format},
        )


def _needs_thread(images: Images) -> bool:
    """True when building the body reads files or encodes images: work to keep off the event loop."""
    return any(not isinstance(item, (bytes, bytearray, memoryview)) for item in as_list(images))


# --------------------------------------------------------------------------- the two shells

HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)
TransportT = TypeVar("TransportT", httpx.BaseTransport, httpx.AsyncBaseTransport)


class _Shell(Generic[HttpT, TransportT]):
    """What both clients share: their arguments, checked once, and the httpx client they open."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.25,
        *,
        max_backoff: float = 10.0,
        max_connections: int = 10,
        transport: TransportT | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.retry_policy = RetryPolicy(retries=retries, backoff=backoff, max_backoff=max_backoff)
        headers = {"User-Agent": "keras-serve-client/0.1"}
        if api_key:
            headers["X-API-Key"] = api_key
        if not isinstance(timeout, httpx.Timeout):
            timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        base_url = service_url(base_url)
        options: dict[str, Any] = {
            "base_url": base_url,
            "headers": headers,
            "timeout": timeout,
            # No TLS on a plain-http URL (and redirects are never followed), so skip loading the
            # CA bundle: 0.1 s of start-up for every command-line run.
            "verify": not base_url.startswith("http://"),
            "limits": httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            "transport": transport,
        }
        self._http: HttpT = self._open(options)

    def _open(self, options: dict[str, Any]) -> HttpT:
        raise NotImplementedError


class Client(_Shell[httpx.Client, httpx.BaseTransport]):
    """A synchronous client for the prediction service.

    Use it as a context manager (or call `close()`) so its connections are released.

    Args:
        base_url: the service's root URL, e.g. "http://127.0.0.1:8000".
        api_key: sent as `X-API-Key` when the service requires one.
        timeout: seconds per request (or an `httpx.Timeout`).
        retries: extra attempts on connection errors, 429 and 503; 0 disables retrying.
        backoff: first wait between attempts in seconds, doubled each time (a server's
            `Retry-After` takes precedence).
        max_backoff: cap on the computed wait.
        max_connections: connections kept to the service.
        transport: an httpx transport to use instead of the network (tests).

    Example:
        >>> with Client("http://127.0.0.1:8000") as client:
        ...     result = client.predict("digits", ["seven.png", "three.png"], top_k=3)
        ...     result.predictions[0].label
        '7'
    """

    def _open(self, options: dict[str, Any]) -> httpx.Client:
        return httpx.Client(**options)

    def close(self) -> None:
        """Release the client's connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, request: _Request) -> httpx.Response | Exception:
        try:
            return self._http.request(request.method, request.path, **request.options)
        except RETRY_EXCEPTIONS as exc:  # the core decides whether it is worth another try
            return exc

    def _run(self, call: _Call[T]) -> T:
        attempts = _Attempts(call, self.retry_policy)
        while True:
            step = attempts.after(self._send(attempts.request))
            if isinstance(step, _Done):
                return step.value
            time.sleep(step.seconds)

    def health(self) -> Health:
        """Whether the service is ready.

        Returns:
            A `Health`: `ready` is True when every model is loaded and warmed; a 503 answer
            is returned (with each model's state), not raised.
        """
        return self._run(_Calls.health())

    def models(self) -> list[ModelInfo]:
        """The models the service serves.

        Returns:
            One `ModelInfo` per model: name, versions, state, class names, input spec.
        """
        return self._run(_Calls.models())

    def model(self, name: str, version: int | None = None) -> ModelInfo:
        """One model version's card and layers.

        Args:
            name: the model's name.
            version: a version; default: the latest ready one.

        Returns:
            Its `ModelInfo`, with `layers` (name, type, output shape) filled in.

        Raises:
            NotFound: no such model or version.
        """
        return self._run(_Calls.model(name, version))

    def predict(
        self, model: str, images: Images, top_k: int | None = None, version: int | None = None
    ) -> PredictResult:
        """Classify one image or a batch in one request.

        Args:
            model: the model's name.
            images: one image or a sequence: file paths, image file bytes, PIL images, uint8
                arrays (sent as PNG), or float arrays of raw pixels in the model's input shape
                (sent as JSON instances; a 4-D float array is a batch). Don't mix float
                arrays with the other kinds in one call.
            top_k: how many of the most likely classes each prediction lists.
            version: a model version; default: the latest ready one.

        Returns:
            A `PredictResult`: the model and version that answered and one `Prediction` per
            image, in order.

        Raises:
            ServiceError: a subclass per failure, e.g. `BadRequest` (corrupt image),
                `NotFound` (unknown model or version), `PayloadTooLarge`,
                `UnsupportedMediaType`, `InvalidInput`, `Unavailable` (after retries).
        """
        return self._run(_Calls.predict(model, build_body(images), top_k, version))

    def activations(
        self, id: str, layers: Sequence[str] | str | None = None, format: str = "npz"
    ) -> dict[str, np.ndarray]:
        """The intermediate activations behind an earlier prediction.

        Args:
            id: a `Prediction.id` from a recent `predict` call.
            layers: layer names (a list or a comma-separated string); default: every layer.
            format: "npz" (compact, the default) or "json" (base64 float32), as transport.

        Returns:
            One float32 array per layer, by layer name, shaped as the service returns it.

        Raises:
            NotFound: unknown or expired prediction id.
            BadRequest: unknown layer name (the message lists the valid ones).
            PayloadTooLarge: the answer would exceed the service's budget; ask for fewer layers.
        """
        return self._run(_Calls.activations(id, layers, format))


class AsyncClient(_Shell[httpx.AsyncClient, httpx.AsyncBaseTransport]):
    """The asyncio twin of `Client`: the same arguments and methods, awaited.

    Use it as an async context manager (or await `aclose()`). `max_connections` is the
    useful concurrency; `transport` takes an httpx async transport.
    """

    def _open(self, options: dict[str, Any]) -> httpx.AsyncClient:
        return httpx.AsyncClient(**options)

    async def aclose(self) -> None:
        """Release the client's connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _send(self, request: _Request) -> httpx.Response | Exception:
        try:
            return await self._http.request(request.method, request.path, **request.options)
        except RETRY_EXCEPTIONS as exc:  # the core decides whether it is worth another try
            return exc

    async def _run(self, call: _Call[T]) -> T:
        attempts = _Attempts(call, self.retry_policy)
        while True:
            step = attempts.after(await self._send(attempts.request))
            if isinstance(step, _Done):
                return step.value
            await asyncio.sleep(step.seconds)

    async def health(self) -> Health:
        """`Client.health`, awaited."""
        return await self._run(_Calls.health())

    async def models(self) -> list[ModelInfo]:
        """`Client.models`, awaited."""
        return await self._run(_Calls.models())

    async def model(self, name: str, version: int | None = None) -> ModelInfo:
        """`Client.model`, awaited."""
        return await self._run(_Calls.model(name, version))

    async def predict(
        self, model: str, images: Images, top_k: int | None = None, version: int | None = None
    ) -> PredictResult:
        """`Client.predict`, awaited; files are read and images encoded off the event loop."""
        body = await asyncio.to_thread(build_body, images) if _needs_thread(images) else build_body(images)
        return await self._run(_Calls.predict(model, body, top_k, version))

    async def activations(
        self, id: str, layers: Sequence[str] | str | None = None, format: str = "npz"
    ) -> dict[str, np.ndarray]:
        """`Client.activations`, awaited."""
        return await self._run(_Calls.activations(id, layers, format))
