"""Keeping Python's full garbage collections off the request path.

A process with TensorFlow, Keras and the four shipped models holds about 384,000 objects
tracked by the cyclic garbage collector; one full (generation 2) collection walks them all
and took 0.56 s on this machine, on whichever thread triggers it (usually the event loop).
CPython 3.11 starts one only when the objects that survived since the last one reach 25% of
the long-lived ones, so a loaded service sees them rarely (none in 16 s of digits at
concurrency 8 here), but a hot reload or a filling input cache brings one on. Once a set of
model versions has loaded, `freeze_when_loaded` collects once and moves every object alive
into the permanent generation (`gc.freeze`); later collections skip them (a full collection
then took under 1 ms). Frozen objects are never collected, so when a version that was frozen
is unloaded (it left the store, or a failed one is replaced), everything is unfrozen first and
the collection frees it: one full collection, once per such change.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from service.registry import LOADING, ModelRegistry

log = logging.getLogger(__name__)


def freeze(unfreeze_first: bool = False) -> float:
    """Collect, then freeze what is left; returns the seconds it took. `unfreeze_first`: what was
    frozen before is collected too (it may hold an unloaded version)."""
    started = time.perf_counter()
    if unfreeze_first:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started


async def freeze_when_loaded(registry: ModelRegistry, poll_seconds: float = 0.5) -> None:
    """Freeze the heap each time the set of loaded versions changes and no load is in progress."""
    frozen: frozenset = frozenset()
    while True:
        await asyncio.sleep(poll_seconds)
        versions = [v for name in registry.names() for v in registry.versions(name)]
        if any(v.state == LOADING for v in versions) or registry.warming:
            continue
        current = frozenset((v.name, v.version, v.state) for v in versions)
        if current != frozen:
            seconds = freeze(unfreeze_first=bool(frozen - current))  # a frozen version is gone or replaced
            frozen = current
            log.info("heap frozen after loading (%d objects, %.2f s)", gc.get_freeze_count(), seconds)
