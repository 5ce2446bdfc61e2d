"""The model registry: which versions are in the store, their state, and the loaded ones.

Layout read: `<model_dir>/<name>/<version>/{model.keras, model.json}` (see `modelcard`); folders
whose name is not a positive integer, like the `.tmp-*` a writer renames into place, are
ignored. Every version found is loaded in the background: card parsed, sha256 checked,
Keras file loaded in safe mode, inference compiled and warmed, the activation probe built, a
batcher started. Only then does it turn `ready` and, if it is the newest ready version, the
default: state changes happen on the event loop in one step, so a request sees the old
default or the new one, never a half-loaded model. A request keeps the `ModelVersion` it
resolved, so it finishes on that version even if a newer one becomes the default meanwhile.
A version that fails is reported with a reason, and the versions already loaded keep serving.
Each model's newest version is loaded first; the service counts as ready (`all_ready`) once
those are and none failed, and stays so through later reloads while its models have a version
serving; it warms each version's activation probe right after it turns ready.

A version whose Keras outputs on the parity gate's inputs are known (stored with the version
by training, or cached with an earlier `auto` decision in `RUNTIME_CACHE_DIR`) turns ready
without its Keras model: an exported runtime gated against those outputs serves predictions
at once, before TensorFlow is even imported (`start_without_keras`). Its Keras model loads
next, on the same load thread, confirms the choice on the same inputs, and is timed against
it if `auto` has not timed it yet (`confirm_with_keras`); until then, requests that need
layers (activations, kernels, Grad-CAM, `/models/{name}`, v2 metadata and inference) wait
for it (`inspectable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from modelcard import (
    CARD_FILE,
    MODEL_FILE,
    ChecksumMismatch,
    ModelCard,
    list_versions,
    load_verified_model,
    verify_sha256,
)
from service.batching import Batcher
from service.config import Settings
from service.errors import ModelNotFound, ModelNotReady, VersionNotFound
from service.inference import BatchRuntime, Classifier, LayerInfo, configure_tensorflow_threads, describe_layers
from service.metrics import Metrics
from service.runtimes import RuntimeChoice, choose_runtime, confirm_with_keras, start_without_keras

if TYPE_CHECKING:
    import keras

    from service.activations import ActivationProbe

log = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed"]
LOADING: Final = "loading"
READY: Final = "ready"
FAILED: Final = "failed"


@dataclass(eq=False)
class ModelVersion:
    """One version of one model and what the service knows about it."""

    name: str
    version: int
    path: Path
    state: State = LOADING
    reason: str | None = None
    card: ModelCard | None = None
    classifier: BatchRuntime | None = None  # the runtime serving predictions (see `runtime`)
    runtime: RuntimeChoice | None = None
    probe: ActivationProbe | None = None
    layers: list[LayerInfo] = field(default_factory=list)
    batcher: Batcher | None = None
    load_seconds: float | None = None
    files_signature: tuple = ()
    # set once the Keras model is loaded (layers, probe): at `ready`, or after it (see the module doc)
    inspectable: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ready(self) -> bool:
        return self.state == READY


@dataclass(frozen=True)
class _Loaded:
    card: ModelCard
    classifier: BatchRuntime
    runtime: RuntimeChoice
    probe: ActivationProbe | None
    layers: list[LayerInfo]
    seconds: float
    keras_loaded: bool = True  # False: it serves before its Keras model is loaded (`start_without_keras`)


class ModelRegistry:
    """Finds, loads and hot-swaps model versions; resolves a request's model to a loaded version.

    Args:
        settings: the service settings (store path, batching, polling interval).
        metrics: where model states, queue depths and batch sizes are recorded.
        inference_executor: the threads model calls run on.
    """

    def __init__(self, settings: Settings, metrics: Metrics, inference_executor: Executor) -> None:
        self.settings = settings
        self.root = Path(settings.model_dir)
        self.metrics = metrics
        self._inference_executor = inference_executor
        self._load_executor = ThreadPoolExecutor(settings.load_threads, thread_name_prefix="model-load")
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._loads: dict[tuple[str, int], asyncio.Task] = {}
        self._warming: set[asyncio.Future] = set()
        self._poller: asyncio.Task | None = None
        self._ready_with: frozenset[str] | None = None  # the models of the first ready answer (all_ready)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Scan the store, start loading what is there, and poll for changes in the background."""
        await self.refresh()
        if self.settings.reload_interval_seconds > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="model-store-poller")

    async def stop(self) -> None:
        """Stop polling, abandon pending loads, let queued requests finish, stop batchers."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for task in self._loads.values():
            task.cancel()
        self._load_executor.shutdown(wait=False, cancel_futures=True)
        batchers = [v.batcher for versions in self._models.values() for v in versions.values() if v.batcher]
        await asyncio.gather(*(b.close() for b in batchers), return_exceptions=True)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval_seconds)
            try:
                await self.refresh()
            except Exception:  # a transient filesystem error must not end hot reload
                log.exception("polling the model store failed")

    # ------------------------------------------------------------------ discovery

    def _scan(self) -> dict[str, dict[int, tuple]]:
        found: dict[str, dict[int, tuple]] = {}
        if not self.root.is_dir():
            return found
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or folder.name.startswith((".", "_")):
                continue
            versions = {v: _files_signature(folder / str(v)) for v in list_versions(self.root, folder.name)}
            if versions:
                found[folder.name] = versions
        return found

    async def refresh(self) -> None:
        """Compare the store with what is known: load new (or changed failed) versions, drop removed ones."""
        found = await asyncio.to_thread(self._scan)
        wanted = []
        for name, versions in found.items():
            known = self._models.setdefault(name, {})
            for age, (number, signature) in enumerate(sorted(versions.items(), reverse=True)):
                current = known.get(number)
                if current is None or (current.state == FAILED and current.files_signature != signature):
                    wanted.append((age, name, number, signature))
        # each model's newest version first: the service is ready once those are (see all_ready)
        for _, name, number, signature in sorted(wanted):
            self._start_load(name, number, signature)
        for name in list(self._models):
            for number in list(self._models[name]):
                if number not in found.get(name, {}):
                    await self._drop(name, number)
            if not self._models[name]:
                del self._models[name]

    def _start_load(self, name: str, number: int, signature: tuple) -> None:
        entry = ModelVersion(name, number, self.root / name / str(number), files_signature=signature)
        self._models[name][number] = entry
        self.metrics.set_model_state(name, number, LOADING)
        log.info("loading %s version %d", name, number)
        task = asyncio.get_running_loop().create_task(self._load(entry), name=f"load-{name}-{number}")
        key = (name, number)
        self._loads[key] = task
        task.add_done_callback(lambda done: self._loads.pop(key) if self._loads.get(key) is done else None)

    async def _drop(self, name: str, number: int) -> None:
        entry = self._models[name].pop(number)
        log.info("%s version %d left the store; unloading", name, number)
        if (task := self._loads.get((name, number))) is not None:
            task.cancel()
        self.metrics.forget_model_version(name, number)
        if entry.batcher is not None:
            await entry.batcher.close()

    # ------------------------------------------------------------------ loading

    async def _load(self, entry: ModelVersion) -> None:
        loop = asyncio.get_running_loop()
        try:
            loaded = await loop.run_in_executor(self._load_executor, self._load_blocking, entry)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            reason = self._describe_failure(entry, error)
            log.warning(
                "%s version %d failed to load: %s", entry.name, entry.version, reason, exc_info=_unexpected(error)
            )
            entry.state, entry.reason = FAILED, reason
            self.metrics.set_model_state(entry.name, entry.version, FAILED)
            return
        if self._models.get(entry.name, {}).get(entry.version) is not entry:
            return  # removed from the store while it loaded
        batcher = self._make_batcher(entry.name, entry.version, loaded.classifier)
        batcher.start()
        # One synchronous step on the event loop: the version appears fully loaded or not at all.
        entry.card, entry.classifier, entry.layers = loaded.card, loaded.classifier, loaded.layers
        entry.runtime = loaded.runtime
        entry.probe = loaded.probe
        entry.batcher, entry.load_seconds = batcher, loaded.seconds
        entry.state = READY
        self.metrics.set_model_state(entry.name, entry.version, READY)
        self.metrics.set_model_runtime(entry.name, entry.version, loaded.classifier.name, loaded.runtime.precision)
        log.info(
            "%s version %d ready in %.2fs on %s (%s)",
            entry.name,
            entry.version,
            loaded.seconds,
            loaded.classifier.name,
            loaded.runtime.decided_by,
        )
        if not loaded.keras_loaded and not await self._load_keras_after_ready(entry, batcher, loaded.runtime):
            return
        entry.inspectable.set()
        if entry.probe is not None and self.settings.warm_activation_probes:
            # After `ready`, on the load thread (behind any other loads): predictions never wait for
            # it, and an activations request meanwhile compiles what it needs under the probe's lock.
            warming = loop.run_in_executor(self._load_executor, self._warm_probe, entry, entry.probe)
            self._warming.add(warming)
            warming.add_done_callback(self._warming.discard)

    async def _load_keras_after_ready(self, entry: ModelVersion, batcher: Batcher, choice: RuntimeChoice) -> bool:
        """Load the Keras model of a version already serving predictions; False if it failed (the
        version then stops serving). TensorFlow replaces the runtime if `confirm_with_keras` says so."""
        loading = asyncio.get_running_loop().run_in_executor(self._load_executor, self._load_keras, entry, choice)
        self._warming.add(loading)  # the heap is frozen once it is done
        try:
            loaded = await loading
        except asyncio.CancelledError:
            raise
        except Exception as error:
            entry.state, entry.reason = (
                FAILED,
                f"the Keras model failed to load: {self._describe_failure(entry, error)}",
            )
            log.warning(
                "%s version %d stops serving: %s", entry.name, entry.version, entry.reason, exc_info=_unexpected(error)
            )
            self.metrics.set_model_state(entry.name, entry.version, FAILED)
            entry.inspectable.set()
            await batcher.close()
            return False
        finally:
            self._warming.discard(loading)
        if loaded.classifier is not entry.classifier:
            batcher.replace(loaded.classifier)
            entry.classifier = loaded.classifier
            self.metrics.set_model_runtime(entry.name, entry.version, loaded.classifier.name, loaded.runtime.precision)
        entry.runtime, entry.probe, entry.layers = loaded.runtime, loaded.probe, loaded.layers
        log.info("%s version %d: Keras model loaded in %.2fs", entry.name, entry.version, loaded.seconds)
        return True

    def _load_blocking(self, entry: ModelVersion) -> _Loaded:
        started = time.perf_counter()
        try:
            card = ModelCard.model_validate_json((entry.path / CARD_FILE).read_bytes())
        except ValueError as error:
            raise _LoadError(f"invalid model card: {_first_line(error)}") from None
        if card.name != entry.name or card.version != entry.version:
            raise _LoadError(f"card says {card.name!r} version {card.version}, found in {entry.name}/{entry.version}")
        entry.card = card  # visible to /models even if the rest fails
        describe = lambda error: self._describe_failure(entry, error)  # noqa: E731
        early = start_without_keras(card, entry.path, self.settings, describe)
        if early is not None:
            try:  # a corrupt model file fails the version now, as it would with Keras loaded
                verify_sha256(entry.path / MODEL_FILE, card.sha256)
            except ChecksumMismatch as error:
                raise _LoadError(str(error)) from None
            return _Loaded(card, early.runtime, early, None, [], time.perf_counter() - started, keras_loaded=False)
        model, classifier = self._load_model(entry, card)
        runtime = choose_runtime(model, card, entry.path, self.settings, classifier, describe)
        probe = self._build_probe(entry, model, card)
        return _Loaded(card, runtime.runtime, runtime, probe, describe_layers(model), time.perf_counter() - started)

    def _load_keras(self, entry: ModelVersion, choice: RuntimeChoice) -> _Loaded:
        """The Keras half of a version already serving predictions: model, probe, layers, and the
        runtime choice confirmed against it (or TensorFlow instead: `confirm_with_keras`)."""
        started = time.perf_counter()
        card = entry.card
        assert card is not None
        model, classifier = self._load_model(entry, card)
        confirmed = confirm_with_keras(choice, card, entry.path, classifier, self.settings)
        probe = self._build_probe(entry, model, card)
        layers = describe_layers(model)
        return _Loaded(card, confirmed.runtime, confirmed, probe, layers, time.perf_counter() - started)

    def _load_model(self, entry: ModelVersion, card: ModelCard) -> tuple[keras.Model, Classifier]:
        """The verified Keras model and its compiled TensorFlow call (the parity reference)."""
        # the first TensorFlow use of the process sizes its thread pools (later calls are no-ops)
        configure_tensorflow_threads(self.settings.tf_intra_op_threads, self.settings.tf_inter_op_threads)
        try:
            model = load_verified_model(entry.path / MODEL_FILE, card.sha256)
        except ChecksumMismatch as error:
            raise _LoadError(str(error)) from None
        settings = self.settings
        return model, Classifier(model, card.input, card.num_classes, settings.max_batch_size, settings.pad_batches)

    def _build_probe(self, entry: ModelVersion, model: keras.Model, card: ModelCard) -> ActivationProbe | None:
        from service.activations import ActivationProbe  # TensorFlow: imported with the first Keras model

        # A model that predicts but cannot be probed still serves predictions.
        try:
            return ActivationProbe(
                model, card.input, self.settings.max_batch_size, self.settings.activation_probe_cache_size
            )
        except Exception:
            log.exception(
                "%s version %d: activations unavailable, the probe could not be built", entry.name, entry.version
            )
            return None

    @staticmethod
    def _warm_probe(entry: ModelVersion, probe: ActivationProbe) -> None:
        """Compile and run the all-layer function and the default Grad-CAM (`ActivationProbe.warm`)."""
        started = time.perf_counter()
        try:
            probe.warm()
        except Exception:
            log.exception(
                "%s version %d: warming activations failed; they compile on first use", entry.name, entry.version
            )
            return
        log.info("%s version %d: activations warmed in %.2fs", entry.name, entry.version, time.perf_counter() - started)

    @property
    def warming(self) -> int:
        """Activation probes still being warmed after their versions turned ready."""
        return len(self._warming)

    def _make_batcher(self, name: str, number: int, classifier: BatchRuntime) -> Batcher:
        depth = self.metrics.queue_depth.labels(name, str(number))
        sizes = self.metrics.batch_size.labels(name, str(number))
        latency = self.metrics.inference_latency.labels(name, str(number))

        def on_batch(size: int, seconds: float) -> None:
            sizes.observe(size)
            latency.observe(seconds)

        return Batcher(
            classifier,
            self._inference_executor,
            max_batch_size=self.settings.max_batch_size,
            max_wait_us=self.settings.max_batch_wait_us,
            max_queue_size=self.settings.max_queue_size,
            retry_after_seconds=self.settings.retry_after_seconds,
            on_queue_depth=depth.set,
            on_batch=on_batch,
            workers=self.settings.batch_workers,
            inline_us=self.settings.inline_call_us,
        )

    def _describe_failure(self, entry: ModelVersion, error: Exception) -> str:
        if isinstance(error, _LoadError):
            return str(error)
        # Keras and TF messages can carry absolute paths; the client sees store-relative ones.
        text = f"{type(error).__name__}: {_first_line(error)}"
        for path, shown in (
            (entry.path.resolve(), f"{entry.name}/{entry.version}"),
            (entry.path, f"{entry.name}/{entry.version}"),
            (self.root.resolve(), "<model store>"),
            (self.root, "<model store>"),
        ):
            text = text.replace(str(path), shown)
        return text[:300]

    # ------------------------------------------------------------------ queries

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[ModelVersion]:
        """All known versions of `name`, ascending. Raises ModelNotFound."""
        if name not in self._models:
            raise ModelNotFound(f"unknown model {name!r}; known: {', '.join(self.names()) or 'none'}")
        return [self._models[name][v] for v in sorted(self._models[name])]

    def default(self, name: str) -> ModelVersion | None:
        """The newest ready version of `name`, if any."""
        ready = [v for v in self.versions(name) if v.ready]
        return ready[-1] if ready else None

    def resolve(self, name: str, version: int | None = None) -> ModelVersion:
        """The loaded version a request should use: `version`, or the newest ready one.

        Raises:
            ModelNotFound, VersionNotFound: no such model or version in the store.
            ModelNotReady: the version (or every version) is still loading or failed.
        """
        versions = self.versions(name)
        if version is None:
            chosen = self.default(name)
            if chosen is None:
                states = ", ".join(f"v{v.version} {v.state}" for v in versions)
                loading = any(v.state == LOADING for v in versions)
                raise ModelNotReady(f"model {name!r} has no ready version ({states})", self._retry_after(loading))
            return chosen
        entry = self._models[name].get(version)
        if entry is None:
            known = ", ".join(str(v.version) for v in versions)
            raise VersionNotFound(f"model {name!r} has no version {version}; versions: {known}")
        if not entry.ready:
            detail = f": {entry.reason}" if entry.reason else ""
            raise ModelNotReady(
                f"model {name!r} version {version} is {entry.state}{detail}", self._retry_after(entry.state == LOADING)
            )
        return entry

    async def inspectable(self, entry: ModelVersion) -> ModelVersion:
        """`entry` once its Keras model is loaded (at most `KERAS_WAIT_SECONDS` of waiting).

        Raises:
            ModelNotReady: it is still loading after that, or it failed meanwhile.
        """
        if not entry.inspectable.is_set():
            try:
                await asyncio.wait_for(entry.inspectable.wait(), self.settings.keras_wait_seconds)
            except TimeoutError:
                raise ModelNotReady(
                    f"model {entry.name!r} version {entry.version} serves predictions; its layers are still loading",
                    self._retry_after(True),
                ) from None
        if entry.state != READY:
            raise ModelNotReady(f"model {entry.name!r} version {entry.version} is {entry.state}: {entry.reason}")
        return entry

    def _retry_after(self, loading: bool) -> int | None:
        """The Retry-After hint of a `ModelNotReady`: while something loads; none for a failure."""
        return self.settings.retry_after_seconds if loading else None

    async def newest_versions_settled(self, timeout: float, interval: float = 0.05) -> bool:
        """Wait until each model's newest version has left `loading` (ready or failed), for up
        to `timeout` seconds; True if they all did."""
        deadline = asyncio.get_running_loop().time() + timeout
        while any(versions and versions[max(versions)].state == LOADING for versions in self._models.values()):
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(interval)
        return True

    def all_ready(self) -> bool:
        """Whether this replica should take traffic.

        Until it first is: when the store has models, each model's newest version serves
        predictions (its Keras model may still be loading: `inspectable`; older versions load
        after, and a request for one meanwhile is a 503 `model_not_ready`) and no version failed.
        So a replica started on a store with a broken version never takes traffic, and a rolling
        update with `maxUnavailable: 0` stops with the old replicas serving.

        From then on: while each of the models it started with still has a version serving. A new
        version loading or failing beside a serving one, or a new model not serving yet, changes
        nothing: a hot reload, which every replica sees at once, never takes them all out of their
        load balancer. The body of `/health/ready` lists what failed; `/metrics` has `model_state`.
        """
        if self._ready_with is None:
            if not self._models:
                return False
            for versions in self._models.values():
                if not versions or not versions[max(versions)].ready:
                    return False
                if any(v.state == FAILED for v in versions.values()):
                    return False
            self._ready_with = frozenset(self._models)
            return True
        started_with = [name for name in self._models if name in self._ready_with]
        return bool(started_with) and all(self.default(name) is not None for name in started_with)


class _LoadError(Exception):
    """A load failure whose message is already safe to show to clients."""


def _unexpected(error: Exception) -> bool:
    """A load failure whose traceback belongs in the log: anything but the store's own faults
    that the message already says all of (a bad card, a checksum mismatch, a file missing or
    unreadable). What Keras raises on a model file it refuses is logged in full: it may be ours."""
    return not isinstance(error, _LoadError | ChecksumMismatch | OSError)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _files_signature(folder: Path) -> tuple:
    signature: list[tuple[int, int] | None] = []
    for filename in (MODEL_FILE, CARD_FILE):
        try:
            stat = os.stat(folder / filename)
            signature.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            signature.append(None)
    return tuple(signature)
