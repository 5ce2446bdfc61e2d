"""The models in the store: states, cards, layers."""

from __future__ import annotations

from typing import Any, cast

from fastapi import APIRouter, Query

from service.api.deps import RegistryDep
from service.errors import ModelNotReady
from service.registry import FAILED, LOADING, READY, ModelVersion, State
from service.schemas import (
    ERROR_RESPONSES,
    Layer,
    ModelDetail,
    ModelList,
    ModelStatus,
    ModelSummary,
    RuntimeCandidate,
    RuntimeInfo,
    VersionStatus,
)

router = APIRouter(prefix="/models", tags=["models"])


def version_statuses(versions: list[ModelVersion]) -> list[VersionStatus]:
    return [
        VersionStatus(
            version=v.version, state=v.state, reason=v.reason, keras_loaded=v.ready and v.inspectable.is_set()
        )
        for v in versions
    ]


def model_state(versions: list[ModelVersion]) -> State:
    states = {v.state for v in versions}
    if states == {READY}:
        return READY
    return FAILED if FAILED in states else LOADING


def model_status(versions: list[ModelVersion]) -> ModelStatus:
    ready = [v.version for v in versions if v.ready]
    return ModelStatus(
        state=model_state(versions), default_version=ready[-1] if ready else None, versions=version_statuses(versions)
    )


@router.get("", response_model=ModelList, responses={401: ERROR_RESPONSES[401]})
async def list_models(registry: RegistryDep) -> ModelList:
    """Every model in the store: versions and their states, class names, input spec."""
    summaries = []
    for name in registry.names():
        versions = registry.versions(name)
        status = model_status(versions)
        carded = [v for v in versions if v.card is not None]
        shown = registry.default(name) or (carded[-1] if carded else None)
        summaries.append(
            ModelSummary(
                name=name,
                state=status.state,
                default_version=status.default_version,
                versions=status.versions,
                class_names=shown.card.class_names if shown and shown.card else [],
                input=shown.card.input if shown and shown.card else None,
            )
        )
    return ModelList(models=summaries)


@router.get("/{name}", response_model=ModelDetail, responses={k: ERROR_RESPONSES[k] for k in (401, 404, 503)})
async def describe_model(
    name: str,
    registry: RegistryDep,
    version: int | None = Query(None, ge=1, description="a specific version; default: the newest ready one"),
) -> ModelDetail:
    """One model version's card and layers (name, type, output shape): what activation requests need."""
    entry = await registry.inspectable(registry.resolve(name, version))  # the layers come from the Keras model
    if entry.card is None:  # resolve only returns ready versions; keeps type checkers honest
        raise ModelNotReady(f"model {name!r} has no card yet")
    layers = [
        Layer(name=info.name, type=info.type, output_shape=info.output_shape, parameters=info.parameters)
        for info in entry.layers
    ]
    return ModelDetail(
        name=name,
        version=entry.version,
        state=entry.state,
        versions=version_statuses(registry.versions(name)),
        card=entry.card,
        layers=layers,
        runtime=runtime_info(entry),
    )


def runtime_info(entry: ModelVersion) -> RuntimeInfo | None:
    choice = entry.runtime
    if choice is None:
        return None
    return RuntimeInfo(
        in_use=choice.runtime.name,
        precision=choice.precision,
        requested=choice.requested,
        decided_by=choice.decided_by,
        candidates=[
            RuntimeCandidate(
                runtime=c.runtime,
                precision=c.precision,
                state=cast(Any, c.state),
                reason=c.reason,
                artifact=c.artifact,
                max_abs_diff=c.max_abs_diff,
                gate_inputs=c.gate_inputs,
                timings_ms=c.timings_ms,
            )
            for c in choice.candidates
        ],
    )
