"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import RegistryDep
from service.api.models import model_status
from service.schemas import Liveness, Readiness

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=Liveness)
async def live() -> Liveness:
    """200 while the process can answer (never needs the API key)."""
    return Liveness()


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness, "description": "Not ready"}})
async def ready(registry: RegistryDep) -> JSONResponse:
    """200 once each model's newest version serves predictions and no version failed (older
    versions, Keras models and activation warm-ups may still be loading: `background_work`); from
    then on while each of those models has a version serving, whatever loads or fails beside it
    (listed here). 503 with each model's state otherwise."""
    statuses = {name: model_status(registry.versions(name)) for name in registry.names()}
    is_ready = registry.all_ready()
    reason = None if statuses else f"no models found in the model store {registry.root.name!r}"
    body = Readiness(
        status="ready" if is_ready else "not_ready", reason=reason, models=statuses, background_work=registry.warming
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if is_ready else 503)
