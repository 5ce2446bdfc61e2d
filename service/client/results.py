"""What the client returns: plain dataclasses parsed from the service's JSON.

Parsing is tolerant of fields the service adds later (they stay in `raw` where a type keeps
one) so an older client keeps working against a newer server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ClassScore:
    """One entry of a prediction's top-k: a class and its probability."""

    label: str
    index: int | None
    confidence: float

    @classmethod
    def from_json(cls, data: Any) -> ClassScore:
        if isinstance(data, dict):
            confidence = data.get("confidence", data.get("probability", data.get("score"))) or 0.0
            index = data.get("index")
            return cls(str(data.get("label")), None if index is None else int(index), float(confidence))
        label, confidence = data[0], data[1]  # [label, confidence] pairs
        return cls(str(label), None, float(confidence))


@dataclass(frozen=True)
class Prediction:
    """One image's prediction.

    Attributes:
        id: names this prediction for the activations API (`Client.activations(id)`).
        label: the predicted class name.
        index: the predicted class index.
        confidence: the predicted class's probability.
        probabilities: every class's probability, by class name.
        top_k: the k most likely classes, most likely first.
    """

    id: str | None
    label: str
    index: int
    confidence: float
    probabilities: dict[str, float] = field(default_factory=dict)
    top_k: list[ClassScore] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Prediction:
        return cls(
            id=None if data.get("id") is None else str(data["id"]),
            label=str(data["label"]),
            index=int(data["index"]),
            confidence=float(data["confidence"]),
            probabilities={str(k): float(v) for k, v in (data.get("probabilities") or {}).items()},
            top_k=[ClassScore.from_json(item) for item in data.get("top_k") or []],
        )


@dataclass(frozen=True)
class PredictResult:
    """The answer to one predict call: which model version answered, and one prediction per image
    in request order."""

    model: str
    version: int
    predictions: list[Prediction]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PredictResult:
        return cls(
            model=str(data["model"]),
            version=int(data["version"]),
            predictions=[Prediction.from_json(p) for p in data.get("predictions", [])],
        )


@dataclass(frozen=True)
class ModelInfo:
    """A served model as `GET /models` or `GET /models/{name}` describes it.

    Attributes:
        name: the model's name (the store folder).
        version: the default version (latest ready), if any.
        versions: every version the service knows.
        state: the default version's state (`loading`, `ready`, `failed`), if given.
        class_names: the classes, in output order.
        input: the input spec (height, width, channels, color_mode, ...).
        layers: layer name, type and output shape (only from `model(name)`).
        raw: the whole JSON object, for fields not listed here.
    """

    name: str
    version: int | None
    versions: list[int]
    state: str | None
    class_names: list[str]
    input: dict[str, Any]
    layers: list[dict[str, Any]]
    raw: dict[str, Any]

    @property
    def layer_names(self) -> list[str]:
        return [str(layer.get("name")) for layer in self.layers]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelInfo:
        card = data.get("card")
        merged = {**card, **data} if isinstance(card, dict) else dict(data)
        versions_field = merged.get("versions") or []
        versions = []
        for item in versions_field:
            value = item.get("version") if isinstance(item, dict) else item
            if value is not None:
                versions.append(int(value))
        version = merged.get("version", merged.get("default_version", merged.get("latest")))
        if version is None and versions:
            version = max(versions)
        if not versions and version is not None:
            versions = [int(version)]
        state = merged.get("state")
        if state is None and isinstance(versions_field, list):
            states = [item.get("state") for item in versions_field if isinstance(item, dict)]
            state = states[-1] if states else None
        spec = merged.get("input") or merged.get("input_spec") or {}
        return cls(
            name=str(merged.get("name")),
            version=None if version is None else int(version),
            versions=sorted(set(versions)),
            state=None if state is None else str(state),
            class_names=[str(c) for c in merged.get("class_names") or []],
            input=dict(spec) if isinstance(spec, dict) else {},
            layers=[dict(layer) for layer in merged.get("layers") or [] if isinstance(layer, dict)],
            raw=data,
        )


@dataclass(frozen=True)
class Health:
    """Readiness as `GET /health/ready` reports it.

    Attributes:
        ready: True when every model found is loaded and warmed (HTTP 200).
        status_code: the HTTP status (200 or 503).
        models: the per-model states the service listed.
        raw: the whole JSON body.
    """

    ready: bool
    status_code: int
    models: Any
    raw: dict[str, Any]
