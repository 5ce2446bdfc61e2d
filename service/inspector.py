"""From a prediction id (or uploaded images) to activations, kernels or Grad-CAM, as response bytes.

The activations counterpart of `Predictor`, and like it free of HTTP: the routers hand over
what the request asked for and get back bytes, a media type and headers. Inspection has a
capacity of its own, apart from predictions: its model calls and encoding run on its own
executor (`inspection_threads`, default one thread, so it takes at most one core's worth of
Python from the batchers), and at most `max_inspections_in_flight` requests run or wait for
it; beyond that a request gets 503 with Retry-After at once, counted in `/metrics`. The event
loop only checks and routes. Every answer is held to one byte budget
(`max_activation_response_bytes`): what can be sized from layer shapes alone is refused before
anything is computed, the rest once encoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from service import rendering
from service.errors import (
    ActivationsUnavailable,
    BadRequest,
    ModelNotFound,
    PredictionNotFound,
    QueueFull,
    ResponseTooLarge,
    VersionNotFound,
)
from service.input_cache import CachedInput, InputCache
from service.metrics import Metrics
from service.predictor import Predictor
from service.registry import ModelRegistry, ModelVersion

if TYPE_CHECKING:
    from service.activations import ActivationProbe

log = logging.getLogger(__name__)

Format = Literal["json", "npz", "png"]


def lower_thread_priority() -> None:
    """Give the calling thread a nice of 10 (Linux: per thread), so that on a busy CPU its Python
    work (encoding, slicing) yields to the event loop and the batchers."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError) as error:  # not Linux, or not allowed: run at normal priority
        log.debug("inspection threads keep their priority: %s", error)


# Response headers a browser on another origin may read (CORS), besides the body.
EXPOSED_HEADERS = (
    "X-Model",
    "X-Model-Version",
    "X-Prediction-Id",
    "X-Grid-Rows",
    "X-Grid-Columns",
    "X-Scale",
    "X-Layer",
    "X-Class-Index",
)
Encoding = Literal["base64", "list"]


@dataclass(frozen=True)
class Rendered:
    """A response body ready to send."""

    content: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ActivationsQuery:
    """What an activations request asked for.

    Attributes:
        layers: layer names for json and npz; None: every layer.
        format: "json", "npz" or "png".
        encoding: array data in json: "base64" or "list".
        layer: the one layer a png draws.
        scale: png tile upscale; None: the default.
    """

    layers: list[str] | None = None
    format: Format = "json"
    encoding: Encoding = "base64"
    layer: str | None = None
    scale: int | None = None


class Inspector:
    """Serves activations, kernels and Grad-CAM for the HTTP layer.

    Args:
        registry: resolves model names and versions.
        cache: the inputs of recent predictions, by id.
        predictor: decodes uploaded images and issues ids for them.
        executor: where model calls and encoding (base64, npz, PNG) run; not the batchers' one.
        max_response_bytes: the largest body any of these answers may have.
        max_in_flight: requests that may run or wait for the executor at once.
        retry_after_seconds: sent with the 503 beyond `max_in_flight`.
        metrics: where requests in flight and refused are counted.
        duty_cycle: the share of wall time an inspection thread may work: after a step that took
            t seconds it rests t * (1 / duty_cycle - 1), holding its place, so hammering clients
            meet the in-flight limit (503) instead of taking the CPU from predictions.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        cache: InputCache,
        predictor: Predictor,
        executor: Executor,
        max_response_bytes: int,
        max_in_flight: int,
        retry_after_seconds: int,
        metrics: Metrics,
        duty_cycle: float = 1.0,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.predictor = predictor
        self._executor = executor
        self.max_response_bytes = max_response_bytes
        self.max_in_flight = max_in_flight
        self.retry_after_seconds = retry_after_seconds
        self.metrics = metrics
        self.duty_cycle = duty_cycle
        self._in_flight = 0

    @contextlib.contextmanager
    def _admitted(self, kind: str) -> Iterator[None]:
        """Hold one of the `max_in_flight` places (the event loop is the only caller: no lock).

        Raises:
            QueueFull: every place is taken.
        """
        if self._in_flight >= self.max_in_flight:
            self.metrics.inspections_refused.labels(kind).inc()
            raise QueueFull(
                f"{self.max_in_flight} activations/kernels/Grad-CAM requests are already in progress; "
                "retry later (predictions are not affected)",
                self.retry_after_seconds,
            )
        self._in_flight += 1
        self.metrics.inspections_in_flight.set(self._in_flight)
        try:
            yield
        finally:
            self._in_flight -= 1
            self.metrics.inspections_in_flight.set(self._in_flight)

    # ------------------------------------------------------------------ activations

    async def activations(self, prediction_id: str, query: ActivationsQuery) -> Rendered:
        """The activations behind an earlier prediction.

        Raises:
            PredictionNotFound: unknown or expired id, or its model version is no longer loaded.
            UnknownLayer, UnsuitableLayer, BadRequest: what the query names does not fit.
            ResponseTooLarge: over the byte budget.
        """
        cached, entry = self._lookup(prediction_id)
        batch = np.asarray(cached.array, np.float32)[None]
        with self._admitted("activations"):
            return await self._activations(entry, batch, [prediction_id], query)

    async def activations_of_inputs(
        self,
        name: str,
        inputs: Sequence[bytes | Any],
        version: int | None,
        query: ActivationsQuery,
        gone: Callable[[], Any] | None = None,
    ) -> Rendered:
        """The activations of uploaded images (file bytes or pixel arrays), each given an id as by `/predict`.

        `gone` is `Predictor.prepare`'s: decoding stops for a client that has hung up.
        """
        entry = self.registry.resolve(name, version)
        assert entry.card is not None  # resolve() returns ready versions only
        with self._admitted("activations"):  # before waiting for Keras: a waiting request holds its body
            await self._probe(entry)
            arrays = await self.predictor.prepare(inputs, entry.card.input, gone)
            ids = self.predictor.remember(entry, arrays)
            batch = np.stack([np.asarray(array, np.float32) for array in arrays])
            return await self._activations(entry, batch, ids, query)

    async def layer_outputs(self, entry: ModelVersion, batch: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """Layers `names` (checked) for a preprocessed batch, as `/activations` computes them, within the byte budget.

        Raises:
            ActivationsUnavailable, UnknownLayer, ResponseTooLarge.
        """
        with self._admitted("activations"):
            probe = await self._probe(entry)
            names = probe.select(names)
            self._check_size(4 * len(batch) * sum(probe.layers[name].values for name in names), "ask for fewer layers")
            return await self._infer(probe, batch, names)

    async def _activations(
        self, entry: ModelVersion, batch: np.ndarray, ids: list[str], query: ActivationsQuery
    ) -> Rendered:
        probe = await self._probe(entry)
        headers = _headers(entry, ids)
        if query.format == "png":
            return await self._activation_grid(probe, batch, query, headers)
        names = probe.select(query.layers)
        values = len(batch) * sum(probe.layers[name].values for name in names)
        estimate = rendering.estimated_bytes(values, len(names), query.format, query.encoding)
        self._check_size(estimate, _activations_hint(query))
        if query.format == "json" and query.encoding == "list" and len(batch) > 1:
            # text size depends on the values: the first image's, times the images, before computing the rest
            first = await self._infer(probe, batch[:1], names)
            self._check_size(len(batch) * await self._render(_list_bytes, first.values()), _activations_hint(query))
        arrays = await self._infer(probe, batch, names)
        if query.format == "json" and query.encoding == "list":  # and all of them, before any text is built
            self._check_size(await self._render(_list_bytes, arrays.values()), _activations_hint(query))
        if query.format == "npz":
            content = await self._render(rendering.npz_bytes, arrays)
            headers["Content-Disposition"] = f'attachment; filename="activations-{ids[0]}.npz"'
            media_type = rendering.NPZ
        else:
            fields = {
                "model": entry.name,
                "version": entry.version,
                "id": ids[0] if len(ids) == 1 else None,
                "ids": ids,
            }
            types = {name: probe.layers[name].type for name in names}
            content = await self._render(_activations_json, fields, arrays, types, query.encoding)
            media_type = rendering.JSON
        self._check_size(len(content), _activations_hint(query))
        return Rendered(content, media_type, headers)

    async def _activation_grid(
        self, probe: ActivationProbe, batch: np.ndarray, query: ActivationsQuery, headers: dict[str, str]
    ) -> Rendered:
        if not query.layer:
            raise BadRequest(
                "format=png draws one layer's feature maps: name it with ?layer=NAME; spatial layers: "
                + ", ".join(probe.spatial_names())
            )
        layer = probe.spatial_layer(query.layer, "draw as a grid")
        if len(batch) != 1:
            raise BadRequest(f"format=png draws one image, not {len(batch)}; use format=json or npz for a batch")
        height, width, channels = (d or 1 for d in layer.shape)
        scale = query.scale or rendering.default_scale((height, width), rendering.grid_shape(channels))
        grid_width, grid_height = rendering.grid_size((height, width), channels, scale)
        self._check_size(grid_width * grid_height, "use a smaller ?scale")
        arrays = await self._infer(probe, batch, [layer.name])
        picture = await self._render(rendering.channel_grid, arrays[layer.name][0], scale)
        self._check_size(len(picture.png), "use a smaller ?scale")
        return Rendered(picture.png, rendering.PNG, {**headers, **_grid_headers(picture)})

    # ------------------------------------------------------------------ kernels

    async def kernels(
        self,
        name: str,
        layer: str,
        version: int | None,
        format: Literal["png", "json"],
        encoding: Encoding,
        scale: int | None,
    ) -> Rendered:
        """A Conv2D layer's learned kernels: a PNG grid, or the kernel and bias arrays.

        Raises:
            UnknownLayer, UnsuitableLayer: no such layer, or not a Conv2D.
            ResponseTooLarge: over the byte budget.
        """
        entry = self.registry.resolve(name, version)
        probe = await self._probe(entry)
        with self._admitted("kernels"):
            return await self._kernels(entry, probe, layer, format, encoding, scale)

    async def _kernels(
        self,
        entry: ModelVersion,
        probe: ActivationProbe,
        layer: str,
        format: Literal["png", "json"],
        encoding: Encoding,
        scale: int | None,
    ) -> Rendered:
        kernel, bias = await self._render(probe.kernels, layer)  # reads TF variables: off the event loop
        headers = _headers(entry, [])
        if format == "png":
            self._check_size(rendering.kernel_grid_pixels(kernel.shape, scale), "use a smaller ?scale or format=json")
            picture = await self._render(rendering.kernel_grid, kernel, scale)
            self._check_size(len(picture.png), "use a smaller ?scale or format=json")
            return Rendered(picture.png, rendering.PNG, {**headers, **_grid_headers(picture)})
        values = kernel.size + (0 if bias is None else bias.size)
        hint = "use encoding=base64" if encoding == "list" else "this layer is too large to send"
        self._check_size(rendering.estimated_bytes(values, 2, "json", encoding), hint)
        if encoding == "list":
            self._check_size(await self._render(_list_bytes, [kernel] if bias is None else [kernel, bias]), hint)
        fields = {"model": entry.name, "version": entry.version, "layer": layer, "type": probe.layers[layer].type}
        content = await self._render(_kernels_json, fields, kernel, bias, encoding)
        self._check_size(len(content), hint)
        return Rendered(content, rendering.JSON, headers)

    # ------------------------------------------------------------------ Grad-CAM

    async def gradcam(
        self,
        prediction_id: str,
        label: str | None,
        layer: str | None,
        format: Literal["png", "json"],
        encoding: Encoding,
        scale: int | None,
    ) -> Rendered:
        """Grad-CAM for an earlier prediction: an overlay PNG on its input, or the heatmap array.

        Args:
            prediction_id: from `/predict`.
            label: the class to explain; default: the predicted one.
            layer: the layer whose feature maps are weighted; default: the last Conv2D.
            format: "png" or "json".
            encoding: the heatmap's data in json.
            scale: the overlay's integer upscale of the input.

        Raises:
            PredictionNotFound, UnknownLayer, UnsuitableLayer, BadRequest (unknown class), ResponseTooLarge.
        """
        cached, entry = self._lookup(prediction_id)
        probe = await self._probe(entry)
        assert entry.card is not None  # _lookup() resolves to a ready version
        classes = entry.card.class_names
        if label is not None and label not in classes:
            raise BadRequest(f"unknown class {label[:100]!r}; classes: {', '.join(classes)}")
        class_index = None if label is None else classes.index(label)
        if format == "png":
            height, width = cached.array.shape[:2]
            side = scale or rendering.overlay_scale((height, width))
            self._check_size(height * width * side * side * 3, "use a smaller ?scale")
        with self._admitted("gradcam"):
            return await self._gradcam(cached, entry, probe, prediction_id, layer, class_index, format, encoding, scale)

    async def _gradcam(
        self,
        cached: CachedInput,
        entry: ModelVersion,
        probe: ActivationProbe,
        prediction_id: str,
        layer: str | None,
        class_index: int | None,
        format: Literal["png", "json"],
        encoding: Encoding,
        scale: int | None,
    ) -> Rendered:
        assert entry.card is not None
        classes = entry.card.class_names
        result = await self._render(probe.gradcam, cached.array, layer, class_index)
        headers = {
            **_headers(entry, [prediction_id]),
            "X-Layer": result.layer,
            "X-Class-Index": str(result.class_index),
        }
        if format == "png":
            picture = await self._render(rendering.heatmap_overlay, cached.array, result.heatmap, scale)
            return Rendered(picture.png, rendering.PNG, headers)
        fields = {
            "model": entry.name,
            "version": entry.version,
            "id": prediction_id,
            "layer": result.layer,
            "label": classes[result.class_index],
            "index": result.class_index,
            "probability": rendering.short_float(result.probabilities[result.class_index]),
            "peak": rendering.short_float(result.peak),
        }
        if encoding == "list":
            self._check_size(await self._render(_list_bytes, [result.heatmap]), "use encoding=base64")
        content = await self._render(_gradcam_json, fields, result.heatmap, encoding)
        self._check_size(len(content), "use encoding=base64")
        return Rendered(content, rendering.JSON, headers)

    # ------------------------------------------------------------------ helpers

    def _lookup(self, prediction_id: str) -> tuple[CachedInput, ModelVersion]:
        shown = prediction_id[:64]
        cached = self.cache.get(prediction_id)
        if cached is None:
            raise PredictionNotFound(
                f"no prediction {shown!r}: the id is unknown or has expired (inputs are kept "
                f"{self.cache.ttl_seconds:g}s, the oldest dropped first when the cache is full); predict again"
            )
        try:
            entry = self.registry.resolve(cached.model, cached.version)
        except (ModelNotFound, VersionNotFound):
            raise PredictionNotFound(
                f"prediction {shown!r} was made by {cached.model} version {cached.version}, which is no longer loaded"
            ) from None
        return cached, entry

    async def _probe(self, entry: ModelVersion) -> ActivationProbe:
        await self.registry.inspectable(entry)
        if entry.probe is None:
            raise ActivationsUnavailable(f"{entry.name} version {entry.version} cannot be probed for activations")
        return entry.probe

    def _check_size(self, size: int, hint: str) -> None:
        if size > self.max_response_bytes:
            raise ResponseTooLarge(
                f"the response would take {size:,} bytes or more, over the {self.max_response_bytes:,} byte limit; "
                + hint
            )

    async def _infer(self, probe: ActivationProbe, batch: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        return await self._render(probe, batch, names)

    async def _render(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run `function` on the inspection executor (model calls and encoding alike)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._paced, function, *args)

    def _paced(self, function: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args)
        finally:
            if self.duty_cycle < 1:
                time.sleep((time.perf_counter() - started) * (1 / self.duty_cycle - 1))


def _headers(entry: ModelVersion, ids: list[str]) -> dict[str, str]:
    headers = {"X-Model": entry.name, "X-Model-Version": str(entry.version)}
    if ids:
        headers["X-Prediction-Id"] = ",".join(ids)
    return headers


def _grid_headers(picture: rendering.Picture) -> dict[str, str]:
    return {"X-Grid-Rows": str(picture.rows), "X-Grid-Columns": str(picture.columns), "X-Scale": str(picture.scale)}


def _activations_hint(query: ActivationsQuery) -> str:
    if query.format == "npz":
        return "ask for fewer layers (?layers=a,b) or fewer images"
    return "ask for fewer layers (?layers=a,b) or use format=npz (raw float32, a third smaller than base64)"


def _list_bytes(arrays: Iterable[np.ndarray]) -> int:
    return sum(rendering.list_text_bytes(array) for array in arrays)


def _activations_json(fields: dict, arrays: dict[str, np.ndarray], types: dict[str, str], encoding: str) -> bytes:
    entries = (rendering.array_entry(array, encoding, name=name, type=types[name]) for name, array in arrays.items())
    return rendering.json_body(fields, entries, "layers")


def _kernels_json(fields: dict, kernel: np.ndarray, bias: np.ndarray | None, encoding: str) -> bytes:
    bias_text = "null" if bias is None else rendering.array_entry(bias, encoding)
    return rendering.splice(fields, kernel=rendering.array_entry(kernel, encoding), bias=bias_text)


def _gradcam_json(fields: dict, heatmap: np.ndarray, encoding: str) -> bytes:
    return rendering.splice(fields, heatmap=rendering.array_entry(heatmap, encoding))
