"""The app factory: `create_app(settings)` wires routers, middleware and error handlers; the
lifespan loads the model store and stops it cleanly. Nothing happens at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.api import ROUTERS
from service.api.docs import DOCS_PATHS, add_api_key_scheme
from service.api.page import PAGE_PATHS
from service.config import Settings
from service.errors import install_error_handlers
from service.heap import freeze_when_loaded
from service.input_cache import InputCache
from service.inspector import EXPOSED_HEADERS, Inspector, lower_thread_priority
from service.metrics import Metrics
from service.middleware import ApiKeyMiddleware, BodyLimitMiddleware, MetricsMiddleware
from service.predictor import Predictor
from service.registry import ModelRegistry

log = logging.getLogger(__name__)

# With WORKERS > 1, how long a worker waits for its models before taking connections (see lifespan)
WORKER_LOAD_WAIT_SECONDS = 120.0

# The explorer page's own files and the docs hold no secrets; every API call they make sends the
# key. The health answers are open too: Kubernetes' and KServe's probes call them without headers.
PUBLIC_PATHS = frozenset(
    {"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", *PAGE_PATHS, *DOCS_PATHS}
)

_DESCRIPTION = """Keras image classifiers over HTTP.

Send images to `POST /models/{name}/predict` as multipart `file` parts, base64 JSON or pixel
arrays; every prediction carries an `id`: `GET /activations/{id}` returns the activations of
any layers for that image, `GET /activations/{id}/gradcam` a Grad-CAM heatmap. Errors always
look like `{"error": {"code": "...", "message": "..."}}`. When the server has an API key, send it as
`X-API-Key` (every route but the health probes, `/health/*` and `/v2/health/*`, the explorer page's
own files and these docs)."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service for `settings` (default: read from the environment)."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        inference_executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="inference")
        decode_executor = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        inspection_executor = ThreadPoolExecutor(
            settings.inspection_threads, thread_name_prefix="inspection", initializer=lower_thread_priority
        )
        registry = ModelRegistry(settings, metrics, inference_executor)
        cache = InputCache(settings.input_cache_ttl_seconds, settings.input_cache_max_bytes, settings.input_cache_path)
        app.state.registry = registry
        app.state.inference_executor = inference_executor
        app.state.input_cache = cache
        app.state.predictor = Predictor(
            registry,
            cache,
            metrics,
            decode_executor,
            settings.max_image_pixels,
            settings.max_top_k,
            settings.max_image_aspect_ratio,
            settings.max_decode_bytes,
        )
        app.state.inspector = Inspector(
            registry,
            cache,
            app.state.predictor,
            inspection_executor,
            settings.max_activation_response_bytes,
            settings.max_inspections_in_flight,
            settings.retry_after_seconds,
            metrics,
            settings.inspection_duty_cycle,
        )
        if settings.api_key is None:
            log.warning("no API_KEY set: the service is open, every route answers anyone who can reach this port")
        else:
            log.info("API key required: X-API-Key on every route but the health probes, the explorer page and the docs")
        await registry.start()
        # With several workers, a worker takes connections once its lifespan has started. Another
        # may already answer /health/ready, so this one waits until it can serve too: otherwise a
        # client told "ready" could meet a 503 model_not_ready from the worker still loading.
        if settings.workers > 1 and not await registry.newest_versions_settled(WORKER_LOAD_WAIT_SECONDS):
            log.warning("models still loading after %g s: taking connections anyway", WORKER_LOAD_WAIT_SECONDS)
        freezer = None
        if settings.gc_freeze_after_load:
            freezer = asyncio.get_running_loop().create_task(freeze_when_loaded(registry), name="heap-freezer")
        try:
            yield
        finally:
            if freezer is not None:
                freezer.cancel()
            await registry.stop()  # serves what is queued, then stops the batchers
            inference_executor.shutdown(wait=False, cancel_futures=True)
            decode_executor.shutdown(wait=False, cancel_futures=True)
            inspection_executor.shutdown(wait=False, cancel_futures=True)
            cache.close()
            metrics.close()

    app = FastAPI(
        title="keras-serve",
        version="0.1.0",
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from the package's own assets (service.api.docs), not a CDN
        redoc_url=None,
    )
    if settings.api_key is not None:
        _openapi = app.openapi
        app.openapi = lambda: add_api_key_scheme(_openapi())  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.metrics = metrics
    for router in ROUTERS:
        app.include_router(router)
    install_error_handlers(app)

    # Last added runs first: metrics see everything, CORS answers preflights before the key check.
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_seconds=settings.body_timeout_seconds
    )
    if settings.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key.get_secret_value(), exempt_paths=PUBLIC_PATHS)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key"],
            expose_headers=["Retry-After", *EXPOSED_HEADERS],
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
