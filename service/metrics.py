"""Prometheus metrics, one `CollectorRegistry` per app so several apps can live in one process.

With several worker processes (`python -m service` with `WORKERS` > 1 sets
`PROMETHEUS_MULTIPROC_DIR` to a new folder before they start), prometheus_client's
multiprocess mode keeps each process's values in files there and a scrape adds them up,
whichever worker answers it: counters and histograms are summed, `queue_depth` and
`inspections_in_flight` too, `input_cache_bytes` (one cache for all) is the latest value, and
`model_state` and `model_runtime` are shown per worker with a `pid` label, since each worker
loads and gates its own models.
"""

from __future__ import annotations

import contextlib
import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MODEL_STATES = ("loading", "ready", "failed")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The service's metrics. Labels are bounded: route templates, model names and versions."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        # read by prometheus_client when it is imported, so set before the worker processes start
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prediction_latency = Histogram(
            "prediction_duration_seconds",
            "end-to-end /predict latency per model (body parsed to response built)",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("predicted_images", "images predicted", ["model", "version"], registry=r)
        self.inference_latency = Histogram(
            "inference_duration_seconds",
            "one model call on one batch",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "batch_size",
            "images per model call (before padding)",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "queue_depth",
            "images waiting for a model call",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_state = Gauge(
            "model_state",
            "1 for the state each model version is in",
            ["model", "version", "state"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.model_runtime = Gauge(
            "model_runtime",
            "1 for the runtime (and precision) serving each loaded model version",
            ["model", "version", "runtime", "precision"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self._runtime_labels: dict[tuple[str, int], tuple[str, str]] = {}
        self.input_cache_bytes = Gauge(
            "input_cache_bytes",
            "bytes held by the recent-inputs cache",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.inspections_in_flight = Gauge(
            "inspections_in_flight",
            "activations/kernels/Grad-CAM requests running or waiting",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.inspections_refused = Counter(
            "inspections_refused",
            "activations/kernels/Grad-CAM requests refused with 503: too many in flight",
            ["kind"],
            registry=r,
        )

        self._request_children: dict[tuple[str, str, str], tuple] = {}
        self._prediction_children: dict[tuple[str, int], tuple] = {}

    # Label lookups take a lock and a few microseconds each; the hot paths keep the children.
    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, str(status))
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(*key),
                self.request_latency.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def observe_prediction(self, model: str, version: int, images: int, seconds: float) -> None:
        key = (model, version)
        children = self._prediction_children.get(key)
        if children is None:
            children = self._prediction_children[key] = (
                self.images.labels(model, str(version)),
                self.prediction_latency.labels(model),
            )
        children[0].inc(images)
        children[1].observe(seconds)

    def set_model_state(self, model: str, version: int, state: str) -> None:
        for name in MODEL_STATES:
            self.model_state.labels(model, str(version), name).set(1.0 if name == state else 0.0)

    def set_model_runtime(self, model: str, version: int, runtime: str, precision: str) -> None:
        if (old := self._runtime_labels.pop((model, version), None)) is not None:
            self._drop(self.model_runtime, model, str(version), *old)
        self._runtime_labels[(model, version)] = (runtime, precision)
        self.model_runtime.labels(model, str(version), runtime, precision).set(1.0)

    def forget_model_version(self, model: str, version: int) -> None:
        self._prediction_children.pop((model, version), None)
        labels = (model, str(version))
        if (old := self._runtime_labels.pop((model, version), None)) is not None:
            self._drop(self.model_runtime, *labels, *old)
        for name in MODEL_STATES:
            self._drop(self.model_state, *labels, name)
        for metric in (self.queue_depth, self.batch_size, self.inference_latency, self.images):
            self._drop(metric, *labels)

    def _drop(self, metric: MetricWrapperBase, *labels: str) -> None:
        """Remove a series. In multiprocess mode its last value stays in this process's file and in
        the scrapes: a gauge is set to 0 first, so a version that is gone shows as neither ready nor busy."""
        with contextlib.suppress(KeyError):
            if self.multiprocess_dir and isinstance(metric, Gauge):
                metric.labels(*labels).set(0)
            metric.remove(*labels)

    def render(self) -> bytes:
        if self.multiprocess_dir:
            every_worker = CollectorRegistry()
            MultiProcessCollector(every_worker, self.multiprocess_dir)
            return generate_latest(every_worker)
        return generate_latest(self.registry)

    def close(self) -> None:
        """This process is stopping: its live gauges leave the scrapes of the others."""
        if self.multiprocess_dir:
            mark_process_dead(os.getpid(), self.multiprocess_dir)
