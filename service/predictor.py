"""From parsed request inputs to a prediction response: resolve the version, decode, batch, label.

The routers hand over what the body held (image file bytes or pixel lists); this module knows
nothing of HTTP. Every prediction gets an id, and its preprocessed input is kept in the
`InputCache` under that id for the activations API.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np

from modelcard import InputSpec
from service.errors import ClientGone, InvalidInput
from service.images import image_to_input, open_image, pixels_to_input
from service.inference import top_indices
from service.input_cache import InputCache
from service.metrics import Metrics
from service.registry import ModelRegistry, ModelVersion

DEFAULT_TOP_K = 5

# Decoding a small image takes tens of microseconds, less than a hop to a thread; a large
# one takes milliseconds to seconds and must not stall the event loop.
_INLINE_DECODE_PIXELS = 256 * 256


class Predictor:
    """Runs predictions for the HTTP layer.

    Args:
        registry: resolves model names and versions.
        cache: where each prediction's input is kept by id.
        metrics: prediction latency and image counts.
        decode_executor: threads that decode large images (a bounded pool of their own, so a
            heavy upload waits there instead of taking the CPU from every model's predictions).
        max_image_pixels: decompression-bomb limit, checked from the header.
        max_top_k: largest `top_k` accepted.
        max_aspect_ratio: longest side over shortest accepted, checked from the header.
        max_decode_bytes: memory one image may take to decode.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        cache: InputCache,
        metrics: Metrics,
        decode_executor: Executor,
        max_image_pixels: int,
        max_top_k: int,
        max_aspect_ratio: float | None = None,
        max_decode_bytes: int | None = None,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.metrics = metrics
        self._decode_executor = decode_executor
        self.max_image_pixels = max_image_pixels
        self.max_top_k = max_top_k
        self.max_aspect_ratio = max_aspect_ratio
        self.max_decode_bytes = max_decode_bytes

    async def prepare(
        self, inputs: Sequence[bytes | Any], spec: InputSpec, gone: Callable[[], Awaitable[bool]] | None = None
    ) -> list[np.ndarray]:
        """Each input (image file bytes, or a pixel array as nested lists) as a model input array.

        Args:
            inputs: image file bytes, or pixel arrays as nested lists.
            spec: the model's input spec.
            gone: answers True once the client has hung up; checked before each large decode
                (a decode in progress runs to its end, bounded by `max_decode_bytes`).

        Raises:
            ClientGone: `gone` said so; nothing more is decoded.
        """
        loop = asyncio.get_running_loop()
        arrays = []
        for item in inputs:
            if isinstance(item, bytes | bytearray | memoryview):
                image = open_image(bytes(item), self.max_image_pixels, self.max_aspect_ratio)
                width, height = image.size
                if width * height <= _INLINE_DECODE_PIXELS:
                    arrays.append(image_to_input(image, spec, self.max_decode_bytes))
                    continue
                if gone is not None and await gone():
                    image.close()
                    raise ClientGone("the client hung up before its images were decoded")
                arrays.append(
                    await loop.run_in_executor(
                        self._decode_executor, image_to_input, image, spec, self.max_decode_bytes
                    )
                )
            else:
                arrays.append(pixels_to_input(item, spec))
        return arrays

    async def predict(
        self,
        name: str,
        inputs: Sequence[bytes | Any],
        *,
        version: int | None = None,
        top_k: int | None = None,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> dict:
        """Predict every input with one version of model `name`.

        Args:
            name: model name.
            inputs: image file bytes, or pixel arrays (nested lists) in the model's input shape.
            version: a specific version; default: the newest ready one.
            top_k: how many best classes to list per prediction (default 5, capped at the class count).
            gone: see `prepare`.

        Returns:
            The response body: `{"model", "version", "predictions": [...]}`, predictions in input order.
        """
        started = time.perf_counter()
        if top_k is not None and not 1 <= top_k <= self.max_top_k:
            raise InvalidInput(f"top_k must be between 1 and {self.max_top_k}")
        entry = self.registry.resolve(name, version)
        assert entry.card is not None and entry.batcher is not None  # resolve() returns ready versions only
        arrays = await self.prepare(inputs, entry.card.input, gone)
        probabilities = await entry.batcher.submit(arrays)
        body = self._response(entry, arrays, probabilities, top_k)
        self.metrics.observe_prediction(entry.name, entry.version, len(arrays), time.perf_counter() - started)
        return body

    def remember(self, entry: ModelVersion, arrays: Sequence[np.ndarray]) -> list[str]:
        """Keep each preprocessed input for the activations API, under a new id; returns the ids."""
        ids = [uuid.uuid4().hex for _ in arrays]
        self.metrics.input_cache_bytes.set(self.cache.put_many(ids, entry.name, entry.version, arrays))
        return ids

    def _response(
        self, entry: ModelVersion, arrays: list[np.ndarray], probabilities: np.ndarray, top_k: int | None
    ) -> dict:
        assert entry.card is not None  # a ready version
        labels = entry.card.class_names
        k = min(top_k or DEFAULT_TOP_K, len(labels))
        rows = readable_floats(probabilities)
        best_rows = top_indices(probabilities, k).tolist()
        predictions = []
        ids = self.remember(entry, arrays)
        for prediction_id, values, best in zip(ids, rows, best_rows, strict=True):
            top = best[0]
            predictions.append(
                {
                    "id": prediction_id,
                    "label": labels[top],
                    "index": top,
                    "confidence": values[top],
                    "probabilities": dict(zip(labels, values, strict=True)),
                    "top_k": [{"label": labels[i], "index": i, "confidence": values[i]} for i in best],
                }
            )
        return {"model": entry.name, "version": entry.version, "predictions": predictions}


def readable_floats(matrix: np.ndarray, digits: int = 8) -> list[list[float]]:
    """float32 values as Python floats rounded to `digits` significant digits.

    A float32 turned into a Python float prints as 0.9980000257492065; rounded, as 0.99800003.
    Eight digits keep float32 precision (within one unit in the last place), vectorised.
    """
    values = matrix.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.floor(np.log10(np.abs(values)))
    magnitude[~np.isfinite(magnitude)] = 0
    scale = 10.0 ** (digits - 1 - magnitude)
    return (np.round(values * scale) / scale).tolist()
