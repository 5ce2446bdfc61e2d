"""What routers get from the running app (built in the lifespan, kept on `app.state`).

The providers are `async def` on purpose: FastAPI runs plain `def` dependencies in a worker
thread, a hop that would cost more than the rest of a small request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.inspector import Inspector
from service.metrics import Metrics
from service.predictor import Predictor
from service.registry import ModelRegistry


async def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def _predictor(request: Request) -> Predictor:
    return request.app.state.predictor


async def _inspector(request: Request) -> Inspector:
    return request.app.state.inspector


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
PredictorDep = Annotated[Predictor, Depends(_predictor)]
InspectorDep = Annotated[Inspector, Depends(_inspector)]
SettingsDep = Annotated[Settings, Depends(_settings)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
