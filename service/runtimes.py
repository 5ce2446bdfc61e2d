"""Which runtime serves a model version: OpenVINO, ONNX Runtime or the compiled TensorFlow call.

At load, each candidate runtime gets the version's exported files (from the store, checked
against the card's sha256, or exported into `RUNTIME_CACHE_DIR` when the store has none), is
compiled, and must pass the parity gate: on seeded noise plus the real inputs stored with the
version, every probability within `PARITY_TOLERANCE` (1e-4) of the Keras model's and the same
argmax on every input (bf16: within 1e-2). A runtime that fails any step is refused for that
version with the reason; TensorFlow, the reference, always remains. With
`INFERENCE_RUNTIME=auto` the accepted runtimes (TensorFlow included) are then timed on the
batch sizes the batcher sends (the smallest and the largest), interleaved, and
the fastest serves; a named runtime serves if it passes the gate. The `auto` decision is kept
in `RUNTIME_CACHE_DIR`, keyed by everything it depends on (the model's and exports' sha256,
the libraries' versions, the CPU, the settings that shape a call): a restart with the same
cache builds and gates only the runtime chosen before, and times nothing.

The Keras model's outputs on the gate inputs, when known without it (stored with the version
by training as `parity_reference`, or kept with a cached decision), let a version serve before
Keras and TensorFlow are even imported: `start_without_keras` gates the exported runtimes
against them (and, with no cached decision, times the two). The Keras model, loaded
afterwards for activations, then checks the choice on the same inputs and, if TensorFlow was
not timed yet, is timed against it (`confirm_with_keras`). Nothing here knows HTTP.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelcard import EXPORT_FILES, ChecksumMismatch, ExportFormat, ModelCard, verify_sha256
from modelcard.exporting import export_model
from modelcard.parity import gate_inputs, inputs_digest, reference_outputs
from service.inference import BatchRuntime, Classifier

if TYPE_CHECKING:
    import keras

    from service.config import Settings

log = logging.getLogger(__name__)

RUNTIMES = ("openvino", "onnxruntime", "tensorflow")
FORMAT_OF: dict[str, ExportFormat] = {"openvino": "openvino", "onnxruntime": "onnx"}
BF16_TOLERANCE = 1e-2


class OnnxRuntime(BatchRuntime):
    """An ONNX model in an ONNX Runtime CPU session (thread-safe `run`)."""

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per core, as TensorFlow's default
        options.inter_op_num_threads = 1
        # Spinning workers keep a core busy between calls, which the event loop on a 2-core box needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        _check_io(self._session.get_inputs()[0].shape, self._session.get_outputs()[0].shape, self)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: batch})[0]


class OpenVinoRuntime(BatchRuntime):
    """An OpenVINO IR compiled for the CPU; one infer request per calling thread."""

    name = "openvino"

    def __init__(self, path: Path, threads: int, precision: str, hint: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        import openvino as ov

        self.precision = precision
        config: dict[str, Any] = {
            # pinned: left to its default, a CPU with bf16 instructions runs in bf16 (drift up to 3e-3)
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": hint.upper(),
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = ov.Core().compile_model(str(path), "CPU", config)
        self._local = threading.local()
        _check_io(list(self._compiled.input(0).partial_shape), list(self._compiled.output(0).partial_shape), self)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        request.infer({0: batch})
        # the output tensor is the request's own buffer, overwritten by its next call
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)


def _check_io(input_shape: list, output_shape: list, runtime: BatchRuntime) -> None:
    def dims(shape: list) -> tuple:
        return tuple(int(str(d)) if str(d).lstrip("-").isdigit() else None for d in shape[1:])

    if dims(input_shape) != runtime.spec.shape or dims(output_shape) != (runtime.num_classes,):
        raise ValueError(f"exported model takes {input_shape} -> {output_shape}, the card says otherwise")


def bf16_supported() -> bool:
    """True when OpenVINO reports bf16 inference on this CPU."""
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no OpenVINO, or no such property: no bf16
        return False


@dataclass
class Candidate:
    """One runtime tried for a version, and what happened."""

    runtime: str
    precision: str = "f32"
    state: str = "refused"  # "in use", "accepted", "refused" or "not tried" (a cached decision)
    reason: str | None = None
    artifact: str | None = None  # "store", "cache", "exported at load"
    max_abs_diff: float | None = None
    gate_inputs: int | None = None
    timings_ms: dict[int, float] = field(default_factory=dict)  # batch size -> median ms per call
    instance: BatchRuntime | None = field(default=None, repr=False)


@dataclass
class RuntimeChoice:
    """The runtime serving a version and how it was chosen."""

    runtime: BatchRuntime
    requested: str
    precision: str
    candidates: list[Candidate]
    decided_by: str
    time_tensorflow: bool = False  # chosen before Keras loaded: TensorFlow is still to be timed against it


class NeedsKeras(LookupError):
    """The runtime's files are neither in the store nor in the cache: exporting them needs the Keras model."""


def _predict_all(runtime: BatchRuntime, inputs: np.ndarray) -> np.ndarray:
    step = runtime.max_batch_size
    return np.concatenate([runtime(inputs[i : i + step]) for i in range(0, len(inputs), step)])


def _artifact_folder(
    fmt: ExportFormat, model: keras.Model | None, card: ModelCard, folder: Path, cache_root: Path
) -> tuple[Path, str]:
    """Where `fmt`'s files are: the store (checked), the cache, or freshly exported into the cache.

    Raises:
        NeedsKeras: they must be exported and `model` is None.
    """
    record = card.exports.get(fmt)
    if record is not None:
        for filename, digest in record.files.items():
            verify_sha256(folder / filename, digest)
        return folder, "store"
    # keyed by the model file's sha256: a changed model never meets a stale export
    cached = Path(cache_root) / card.name / str(card.version) / card.sha256[:16] / fmt
    if all((cached / name).is_file() for name in EXPORT_FILES[fmt]):
        return cached, "cache"
    if model is None:
        raise NeedsKeras(f"no {fmt} files in the store or the cache")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.parent / f".tmp-{fmt}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        export_model(model, tmp, fmt)
        try:
            os.rename(tmp, cached)
        except OSError:  # another process exported it meanwhile
            if not cached.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cached, "exported at load"


def build_runtime(name: str, precision: str, artifacts: Path, settings: Settings, card: ModelCard) -> BatchRuntime:
    """`name` ("openvino" or "onnxruntime") compiled from the exported files in `artifacts`, not warmed."""
    common = {
        "spec": card.input,
        "num_classes": card.num_classes,
        "max_batch_size": settings.max_batch_size,
        "pad_batches": settings.pad_batches,
    }
    threads = settings.tf_intra_op_threads
    if name == "onnxruntime":
        return OnnxRuntime(artifacts / EXPORT_FILES["onnx"][0], threads, **common)
    return OpenVinoRuntime(
        artifacts / EXPORT_FILES["openvino"][0], threads, precision, settings.openvino_performance_hint, **common
    )


def _time(candidates: list[Candidate], shape: tuple[int, ...], sizes: list[int], repeats: int) -> None:
    """Median ms per call at each size, the candidates interleaved so noise hits them alike."""
    samples: dict[tuple[int, int], list[float]] = {}
    rng = np.random.default_rng(0)
    for size in sizes:
        batch = rng.uniform(0, 255, (size, *shape)).astype(np.float32)
        for _ in range(repeats):
            for index, candidate in enumerate(candidates):
                assert candidate.instance is not None
                started = time.perf_counter()
                candidate.instance(batch)
                samples.setdefault((index, size), []).append(time.perf_counter() - started)
    for index, candidate in enumerate(candidates):
        candidate.timings_ms = {size: round(statistics.median(samples[index, size]) * 1e3, 3) for size in sizes}
        assert candidate.instance is not None
        candidate.instance.calls = 0


def _timing_sizes(runtime: BatchRuntime) -> list[int]:
    """The batch sizes `auto` times: the smallest and the largest the batcher sends."""
    return sorted({runtime.warm_sizes[0], runtime.warm_sizes[-1]})


def _score(timings_ms: dict[int, float], reference_ms: dict[int, float]) -> float:
    """Geometric mean over batch sizes of the time relative to the reference's (lower is faster)."""
    ratios = [timings_ms[s] / max(reference_ms[s], 1e-9) for s in reference_ms]
    return float(np.exp(np.mean(np.log(ratios))))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version_of(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def decision_key(card: ModelCard, settings: Settings) -> str:
    """What an `auto` decision depends on, hashed: a change to any of it means timing again."""
    facts = {
        "model": card.sha256,
        "exports": {fmt: record.files for fmt, record in sorted(card.exports.items())},
        "libraries": {name: _version_of(name) for name in ("tensorflow", "keras", "onnxruntime", "openvino")},
        "cpu": [_cpu_name(), os.cpu_count()],
        "settings": [
            settings.inference_precision,
            settings.parity_tolerance,
            settings.tf_intra_op_threads,
            settings.max_batch_size,
            settings.pad_batches,
            settings.openvino_performance_hint,
        ],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _decision_path(card: ModelCard, settings: Settings) -> Path:
    return (
        Path(settings.runtime_cache_dir)
        / "decisions"
        / card.name
        / str(card.version)
        / f"{decision_key(card, settings)}.json"
    )


def _read_decision(path: Path) -> dict | None:
    try:
        decision = json.loads(path.read_text())
        return decision if isinstance(decision, dict) and decision.get("runtime") in RUNTIMES else None
    except (OSError, ValueError):
        return None  # none yet, or unreadable: decide afresh


def _write_decision(
    path: Path, best: Candidate, timed: list[Candidate], inputs: np.ndarray, expected: np.ndarray
) -> None:
    decision = {
        "runtime": best.runtime,
        "precision": best.precision,
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "timings_ms": {f"{c.runtime} {c.precision}": c.timings_ms for c in timed},
        # the Keras model's probabilities on the gate inputs: a restart gates against these before loading Keras
        "reference": {"inputs_sha256": inputs_digest(inputs), "outputs": expected.tolist()},
    }
    tmp = path.with_suffix(f".tmp-{uuid.uuid4().hex}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(decision, indent=1))
        os.replace(tmp, path)
    except OSError as error:  # a read-only cache only costs the timing at the next start
        log.info("runtime decision not cached in %s: %s", path.parent, error)
        tmp.unlink(missing_ok=True)


def choose_runtime(
    model: keras.Model,
    card: ModelCard,
    folder: Path,
    settings: Settings,
    tensorflow: Classifier,
    describe: Callable[[Exception], str] = str,
) -> RuntimeChoice:
    """Gate the eligible runtimes against `tensorflow` (the warmed Keras call) and pick one.

    Args:
        model: the loaded Keras model (exported when the store holds no exports).
        card, folder: the version's card and folder.
        settings: runtime, precision, tolerance, cache folder, threads, batching.
        tensorflow: the reference runtime (warmed here if it is the one chosen).
        describe: turns an exception into the reason shown to clients.
    """
    requested = settings.inference_runtime
    reference = Candidate("tensorflow", state="accepted", reason="the reference: the Keras model itself")
    reference.instance = tensorflow
    inputs, inputs_description = gate_inputs(card, folder)
    expected = _predict_all(tensorflow, inputs)
    cache = _decision_path(card, settings) if requested == "auto" else None
    cached = _read_decision(cache) if cache else None
    if cached:
        reused = _reuse(cached, model, card, folder, settings, reference, inputs, expected, describe)
        if reused is not None:
            chosen, others, note = reused
            return _serve(chosen, reference, others, requested, f"{note}; gate on {inputs_description}")
        log.info("%s v%d: the cached runtime decision no longer holds; timing afresh", card.name, card.version)
    names = [r for r in ("openvino", "onnxruntime") if requested in ("auto", r)]
    candidates: list[Candidate] = []
    for name in names:
        precisions = ["f32"]
        if settings.inference_precision == "bf16" and name == "openvino":
            precisions.insert(0, "bf16")
        for precision in precisions:
            candidate = Candidate(name, precision)
            candidates.append(candidate)
            _try(candidate, model, card, folder, settings, inputs, expected, describe)
        if settings.inference_precision == "bf16" and name == "onnxruntime":
            candidates[-1].reason = (candidates[-1].reason or "accepted in f32") + "; bf16 is offered by OpenVINO only"
    accepted = [c for c in candidates if c.instance is not None]
    timed = [reference, *accepted]
    sizes = _timing_sizes(tensorflow)
    if requested == "auto" and accepted:
        _time(timed, card.input.shape, sizes, settings.runtime_timing_repeats)
        best = min(timed, key=lambda c: _score(c.timings_ms, reference.timings_ms))
        decided_by = (
            f"auto: fastest at batch sizes {sizes} (median of {settings.runtime_timing_repeats} interleaved calls each)"
        )
        assert cache is not None
        _write_decision(cache, best, timed, inputs, expected)
    elif requested == "auto":
        best, decided_by = reference, "auto: no other runtime passed the gate"
    elif requested == "tensorflow":
        best, decided_by = reference, "INFERENCE_RUNTIME=tensorflow"
    else:
        best = next((c for c in accepted if c.runtime == requested), reference)
        decided_by = f"INFERENCE_RUNTIME={requested}" + ("" if best is not reference else f": {requested} refused")
    return _serve(best, reference, candidates, requested, f"{decided_by}; gate on {inputs_description}")


def _serve(
    best: Candidate, reference: Candidate, candidates: list[Candidate], requested: str, decided_by: str
) -> RuntimeChoice:
    """`best` serves: the others' compiled models are freed, and it is warmed on every batch size."""
    best.state = "in use"
    for candidate in (reference, *candidates):
        if candidate is not best:
            candidate.instance = None  # frees the compiled model
    assert best.instance is not None
    best.instance.warm()
    return RuntimeChoice(
        runtime=best.instance,
        requested=requested,
        precision=best.precision,
        candidates=[reference, *candidates],
        decided_by=decided_by,
    )


def _cached_note(cached: dict) -> str:
    when, timings = cached.get("decided_at", "?"), cached.get("timings_ms", {})
    return f"auto: the decision cached at {when} (timings then, ms by batch size: {timings})"


def _cached_reference(cached: dict, inputs: np.ndarray, num_classes: int) -> np.ndarray | None:
    """The Keras outputs stored with a decision, if they are for exactly these gate inputs."""
    reference = cached.get("reference")
    if not isinstance(reference, dict) or reference.get("inputs_sha256") != inputs_digest(inputs):
        return None
    try:
        outputs = np.asarray(reference["outputs"], dtype=np.float32)
    except (KeyError, TypeError, ValueError):
        return None
    return outputs if outputs.shape == (len(inputs), num_classes) else None


def start_without_keras(
    card: ModelCard, folder: Path, settings: Settings, describe: Callable[[Exception], str] = str
) -> RuntimeChoice | None:
    """A runtime for `card` gated against known Keras outputs, without importing Keras or TensorFlow.

    The outputs come from the cached `auto` decision (whose runtime is then the only one built),
    or else from the version's stored `parity_reference` (`auto` then times the exported runtimes
    that pass, and TensorFlow is timed against the winner once its model loads). None when this
    is not possible: `INFERENCE_RUNTIME=tensorflow` or bf16, a cached decision for TensorFlow, no
    outputs for these gate inputs, files that would have to be exported, or no runtime passing.
    The caller then loads Keras and decides with `choose_runtime`; otherwise it calls
    `confirm_with_keras` once the Keras model is loaded.
    """
    requested = settings.inference_runtime
    if requested == "tensorflow" or settings.inference_precision == "bf16":
        return None
    inputs, inputs_description = gate_inputs(card, folder)
    gate = f"gate on {inputs_description}"
    reference = Candidate("tensorflow", state="not tried")
    cached = _read_decision(_decision_path(card, settings)) if requested == "auto" else None
    if cached is not None and "reference" in cached:
        expected = _cached_reference(cached, inputs, card.num_classes)
        if cached["runtime"] == "tensorflow" or expected is None:
            return None
        note = _cached_note(cached)
        best = Candidate(cached["runtime"], str(cached.get("precision", "f32")))
        try:
            passed = _try(best, None, card, folder, settings, inputs, expected, describe)
        except NeedsKeras:
            return None
        if not passed:
            log.info("%s v%d: the cached runtime fails the cached outputs; loading Keras", card.name, card.version)
            return None
        reference.reason = "the reference: its outputs were cached with the decision"
        decided_by = f"{note}; {gate}, against the Keras outputs cached with it"
        return _serve(best, reference, [best, *_not_tried(note, best.runtime)], requested, decided_by)

    expected = reference_outputs(card, folder, inputs)
    if expected is None:
        return None
    candidates = [Candidate(name) for name in ("openvino", "onnxruntime") if requested in ("auto", name)]
    try:
        accepted = [c for c in candidates if _try(c, None, card, folder, settings, inputs, expected, describe)]
    except NeedsKeras:
        return None  # a runtime's files must be exported first: that needs Keras
    if not accepted:
        return None  # TensorFlow serves: it needs Keras
    reference.reason = "the reference: its outputs are stored with the version (parity_reference)"
    stored = f"{gate}, against the Keras outputs stored with the version"
    if requested != "auto":
        return _serve(accepted[0], reference, candidates, requested, f"INFERENCE_RUNTIME={requested}; {stored}")
    assert accepted[0].instance is not None
    sizes = _timing_sizes(accepted[0].instance)
    best = accepted[0]
    if len(accepted) > 1:
        _time(accepted, card.input.shape, sizes, settings.runtime_timing_repeats)
        best = min(accepted, key=lambda c: _score(c.timings_ms, accepted[0].timings_ms))
    decided_by = (
        f"auto: fastest at batch sizes {sizes} (median of {settings.runtime_timing_repeats} interleaved calls each)"
        f"; {stored}"
    )
    choice = _serve(best, reference, candidates, requested, decided_by)
    choice.time_tensorflow = True
    return choice


def confirm_with_keras(
    choice: RuntimeChoice, card: ModelCard, folder: Path, tensorflow: Classifier, settings: Settings
) -> RuntimeChoice:
    """Check a `start_without_keras` choice against the loaded Keras model on the same gate inputs.

    If the serving runtime disagrees with Keras (the outputs it was gated against were wrong),
    TensorFlow takes over. Otherwise, when the choice was made without timing TensorFlow, the
    two are timed now and the faster serves; that decision is cached with the Keras outputs.
    Returns the choice to serve (TensorFlow warmed, if it is the one).
    """
    inputs, _ = gate_inputs(card, folder)
    expected = _predict_all(tensorflow, inputs)
    got = _predict_all(choice.runtime, inputs)
    tolerance = BF16_TOLERANCE if choice.precision == "bf16" else settings.parity_tolerance
    diff = float(np.abs(got - expected).max())
    flips = int((got.argmax(axis=1) != expected.argmax(axis=1)).sum())
    reference, others = choice.candidates[0], choice.candidates[1:]
    serving = next(c for c in others if c.state == "in use")
    reference.state = "accepted"
    if flips or not diff <= tolerance:
        log.warning(
            "%s v%d: %s disagrees with the loaded Keras model (max |diff| %.2e, %d argmax differ); TensorFlow serves",
            card.name,
            card.version,
            choice.runtime.name,
            diff,
            flips,
        )
        serving.state = "refused"
        serving.reason = f"disagreed with the loaded Keras model: max |diff| {diff:.2e}, {flips} argmax differ"
        reference.reason, reference.instance = "the reference: the Keras model itself", tensorflow
        if choice.requested == "auto":  # a cached decision must not pick it again
            _write_decision(_decision_path(card, settings), reference, [reference], inputs, expected)
        return _serve(reference, reference, others, choice.requested, "the runtime chosen before Keras loaded failed")
    reference.reason = f"the reference: the loaded Keras model agrees with the serving runtime within {diff:.1e}"
    if not choice.time_tensorflow:
        return choice
    reference.instance, serving.instance = tensorflow, choice.runtime
    at_load = serving.timings_ms
    _time([reference, serving], card.input.shape, _timing_sizes(choice.runtime), settings.runtime_timing_repeats)
    # TensorFlow is judged against this second round of the serving runtime; the candidates keep
    # the figures of the round that decided between them, so /models shows one round per decision
    against, serving.timings_ms = serving.timings_ms, at_load or serving.timings_ms
    timed = [reference, *(c for c in others if c.timings_ms)]
    if _score(reference.timings_ms, against) < 1.0:
        serving.state = "accepted"
        best = reference
    else:
        reference.instance, best = None, serving
    _write_decision(_decision_path(card, settings), best, timed, inputs, expected)
    how, _, gate = choice.decided_by.partition("; ")
    decided_by = (
        f"{how} (TensorFlow timed once its model loaded, against {serving.runtime} timed again alongside it: "
        f"{reference.timings_ms} against {against} ms by batch size); {gate}"
    )
    if best is serving:
        choice.decided_by = decided_by
        return choice
    return _serve(reference, reference, others, choice.requested, decided_by)


def _not_tried(note: str, besides: str) -> list[Candidate]:
    """The exported runtimes other than `besides`, shown as skipped by a cached decision."""
    return [Candidate(r, state="not tried", reason=note) for r in ("openvino", "onnxruntime") if r != besides]


def _reuse(
    cached: dict,
    model: keras.Model,
    card: ModelCard,
    folder: Path,
    settings: Settings,
    reference: Candidate,
    inputs: np.ndarray,
    expected: np.ndarray,
    describe: Callable[[Exception], str],
) -> tuple[Candidate, list[Candidate], str] | None:
    """(best, candidates, how it was decided) from a cached `auto` decision, if its runtime still
    passes the gate; None when it does not (a changed file, a failing gate): decide afresh."""
    note = _cached_note(cached)
    best = reference
    if cached["runtime"] != "tensorflow":
        best = Candidate(cached["runtime"], str(cached.get("precision", "f32")))
        if not _try(best, model, card, folder, settings, inputs, expected, describe):
            return None
    return best, ([] if best is reference else [best]) + _not_tried(note, best.runtime), note


def _try(
    candidate: Candidate,
    model: keras.Model | None,
    card: ModelCard,
    folder: Path,
    settings: Settings,
    inputs: np.ndarray,
    expected: np.ndarray,
    describe: Callable[[Exception], str],
) -> bool:
    """Build `candidate` and gate it on `inputs` against `expected`; True if it passed (its
    `instance` is then set). Raises NeedsKeras when its files must be exported and `model` is None."""
    name, precision = candidate.runtime, candidate.precision
    candidate.gate_inputs = len(inputs)
    if precision == "bf16" and not bf16_supported():
        candidate.reason = "bf16 asked for, but this CPU has no bf16 support"
        return False
    try:
        fmt = FORMAT_OF[name]
        artifacts, candidate.artifact = _artifact_folder(fmt, model, card, folder, settings.runtime_cache_dir)
        runtime = build_runtime(name, precision, artifacts, settings, card)
        got = _predict_all(runtime, inputs)  # only the chosen runtime is warmed on every bucket, later
    except NeedsKeras:
        raise
    except ChecksumMismatch as error:
        candidate.reason = str(error)
        return False
    except ImportError as error:
        candidate.reason = f"not installed: {error}"
        return False
    except Exception as error:  # a corrupt or foreign artifact refuses this runtime only
        log.warning("%s v%d: %s refused", card.name, card.version, name, exc_info=True)
        candidate.reason = f"could not load: {describe(error)}"
        return False
    tolerance = BF16_TOLERANCE if precision == "bf16" else settings.parity_tolerance
    diff = float(np.abs(got - expected).max())
    candidate.max_abs_diff = diff
    flips = int((got.argmax(axis=1) != expected.argmax(axis=1)).sum())
    if flips or not diff <= tolerance:
        candidate.reason = (
            f"parity gate failed: max |diff| {diff:.2e} (tolerance {tolerance:.0e}), "
            f"{flips} of {len(inputs)} argmax differ"
        )
        log.warning("%s v%d: %s %s refused: %s", card.name, card.version, name, precision, candidate.reason)
        return False
    candidate.state = "accepted"
    candidate.reason = f"parity gate passed: max |diff| {diff:.1e} <= {tolerance:.0e}, every argmax equal"
    candidate.instance = runtime
    return True
