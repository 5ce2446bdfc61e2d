"""Recent prediction inputs by prediction id, so activations can be recomputed later.

Bounded two ways: entries expire after a TTL, and the oldest go first when the memory held
exceeds a byte budget. Every entry lives for the same TTL, so insertion order is expiry order
and both limits are enforced by dropping from the front.

The budget counts what an entry really holds, not just its pixels: each array is copied into a
buffer of its own (a view would keep its whole parent alive), and the array object, the id
string, the entry and its slot in the dict are counted with what the allocator adds to each
(for a 28x28 digit, the Python objects take about as much as the pixels).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Per entry besides the array object and the id string: the dataclass (slots), the model name
# reference, the float, the OrderedDict's hash slot and linked-list node, and malloc's headers
# and rounding on each of the four allocations; measured with tracemalloc and VmRSS (see tests).
_ENTRY_OVERHEAD = 200
_MALLOC_ROUNDING = 16


@dataclass(frozen=True, slots=True)
class CachedInput:
    """The preprocessed input behind one prediction, as the model received it."""

    model: str
    version: int
    array: np.ndarray
    created: float
    nbytes: int  # memory this entry holds, its id included


def _held_bytes(prediction_id: str, array: np.ndarray) -> int:
    """What an entry for an array owning its data holds: `sys.getsizeof` counts the data of such an array."""
    data = sys.getsizeof(array) + sys.getsizeof(prediction_id)
    return data + _ENTRY_OVERHEAD + _MALLOC_ROUNDING * 3


class InputCache:
    """Thread-safe TTL + byte-budget cache of `CachedInput` by id.

    Args:
        ttl_seconds: how long an entry stays retrievable.
        max_bytes: budget for all entries; 0 disables the cache.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, ttl_seconds: float, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, CachedInput] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, prediction_id: str, model: str, version: int, array: np.ndarray) -> None:
        """Remember a copy of `array` under `prediction_id` (ids are unique; an existing one is replaced)."""
        if array.nbytes > self.max_bytes:
            return
        owned = np.array(array, order="C", copy=True)  # its own buffer, whatever `array` is a view of
        owned.flags.writeable = False
        entry = CachedInput(model, version, owned, self._clock(), _held_bytes(prediction_id, owned))
        if entry.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(prediction_id, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[prediction_id] = entry
            self._bytes += entry.nbytes
            self._evict(entry.created)

    def get(self, prediction_id: str) -> CachedInput | None:
        """The entry, or None if unknown, expired or evicted."""
        with self._lock:
            self._evict(self._clock())
            return self._entries.get(prediction_id)

    def _evict(self, now: float) -> None:
        oldest_allowed = now - self.ttl_seconds
        while self._entries:
            first = next(iter(self._entries.values()))
            if first.created > oldest_allowed and self._bytes <= self.max_bytes:
                break
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= dropped.nbytes
