"""The app factory: `create_app(settings)` wires routers, middleware and error handlers; the
lifespan loads the model store and stops it cleanly. Nothing happens at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.api import ROUTERS
from service.api.page import PAGE_PATHS
from service.config import Settings
from service.errors import install_error_handlers
from service.inference import configure_tensorflow_threads
from service.input_cache import InputCache
from service.inspector import EXPOSED_HEADERS, Inspector
from service.metrics import Metrics
from service.middleware import ApiKeyMiddleware, BodyLimitMiddleware, MetricsMiddleware
from service.predictor import Predictor
from service.registry import ModelRegistry

# The explorer page's own files hold no secrets; every API call it makes sends the key. The v2
# health answers (a boolean each) are open too: KServe's probes call them without headers.
PUBLIC_PATHS = frozenset({"/health/live", "/v2/health/live", "/v2/health/ready", *PAGE_PATHS})

_DESCRIPTION = """Keras image classifiers over HTTP.

Send images to `POST /models/{name}/predict` as multipart `file` parts, base64 JSON or pixel
arrays; every prediction carries an `id`: `GET /activations/{id}` returns the activations of
any layers for that image, `GET /activations/{id}/gradcam` a Grad-CAM heatmap. Errors always
look like `{"error": {"code": "...", "message": "..."}}`. When the server has an API key, send it as
`X-API-Key` (every route but `/health/live` and the explorer page's own files)."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service for `settings` (default: read from the environment)."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # before anything touches TensorFlow: the pools are sized once per process
        configure_tensorflow_threads(settings.tf_intra_op_threads, settings.tf_inter_op_threads)
        inference_executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="inference")
        decode_executor = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        registry = ModelRegistry(settings, metrics, inference_executor)
        cache = InputCache(settings.input_cache_ttl_seconds, settings.input_cache_max_bytes)
        app.state.registry = registry
        app.state.inference_executor = inference_executor
        app.state.input_cache = cache
        app.state.predictor = Predictor(
            registry, cache, metrics, decode_executor, settings.max_image_pixels, settings.max_top_k
        )
        app.state.inspector = Inspector(
            registry,
            cache,
            app.state.predictor,
            inference_executor,
            decode_executor,  # encoding activations is CPU work of the same kind as decoding images
            settings.max_activation_response_bytes,
        )
        await registry.start()
        try:
            yield
        finally:
            await registry.stop()  # serves what is queued, then stops the batchers
            inference_executor.shutdown(wait=False, cancel_futures=True)
            decode_executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="keras-serve", version="0.1.0", description=_DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    for router in ROUTERS:
        app.include_router(router)
    install_error_handlers(app)

    # Last added runs first: metrics see everything, CORS answers preflights before the key check.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
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
