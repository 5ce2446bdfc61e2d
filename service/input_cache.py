"""Recent prediction inputs by prediction id, so activations can be recomputed later.

The entries live in SQLite: in this process's memory by default, or in a file that every
worker process of one server opens (`python -m service` with `WORKERS` > 1 sets
`INPUT_CACHE_PATH` to a file of its own), so that `GET /activations/{id}` finds an id
whichever worker made the prediction and whichever answers now.

Bounded two ways: entries expire after a TTL, and the oldest go first when the database
outgrows a byte budget. Every entry lives for the same TTL, so insertion order is expiry
order and both limits are enforced by dropping from the front.

The budget is checked against what the database really occupies: its pages in use (page
count less free pages, times the page size), which is one figure for every process sharing
the file. That counts SQLite's own costs (each row's header, the two index entries, the
unused end of a page a row did not fit in) as the memory they take: for a 28x28 digit about
1.4x its pixels, for a 100x100 RGB image about 1.03x (4 KiB pages).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Another process may hold the write lock for one put (tens of microseconds); waiting longer
# than this means something is wrong, and the put fails loudly.
_BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inputs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    shape TEXT NOT NULL,
    created REAL NOT NULL,
    pixels BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS inputs_created ON inputs (created);
"""


@dataclass(frozen=True, slots=True)
class CachedInput:
    """The preprocessed input behind one prediction, as the model received it."""

    model: str
    version: int
    array: np.ndarray  # read-only
    created: float


def _shape_text(array: np.ndarray) -> str:
    return ",".join(map(str, array.shape))


class InputCache:
    """Thread-safe, process-shareable TTL + byte-budget cache of `CachedInput` by id.

    Args:
        ttl_seconds: how long an entry stays retrievable.
        max_bytes: budget for all entries; 0 disables the cache.
        path: a SQLite file shared with other processes (created if missing); None: this
            process's memory.
        clock: seconds on a clock every sharing process reads alike (default: `time.monotonic`,
            system-wide on Linux); tests pass a fake one.
    """

    def __init__(
        self,
        ttl_seconds: float,
        max_bytes: int,
        path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        # autocommit mode: transactions are begun and committed explicitly below
        self._db = sqlite3.connect(
            ":memory:" if path is None else path,
            isolation_level=None,
            check_same_thread=False,
            timeout=_BUSY_TIMEOUT_MS / 1000,
        )
        if path is not None:
            # WAL: readers never wait for the writer, and a worker killed mid-write leaves the file whole.
            # The cache is rebuilt on every start, so nothing needs to survive a power cut.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=OFF")
        self._db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")  # every sharing process: the first creates
        self._page_size = self._db.execute("PRAGMA page_size").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def nbytes(self) -> int:
        """Bytes the database occupies (its pages in use), for every process sharing it."""
        with self._lock:
            return self._used()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM inputs").fetchone()[0]

    def put(self, prediction_id: str, model: str, version: int, array: np.ndarray) -> int:
        """Remember a copy of `array` under `prediction_id`, a new id (an id already in the cache is an error).

        Returns `nbytes` afterwards."""
        return self.put_many([prediction_id], model, version, [array])

    def put_many(self, ids: Sequence[str], model: str, version: int, arrays: Sequence[np.ndarray]) -> int:
        """`put` each array under its id, in one transaction (one request's images); returns `nbytes` after."""
        if self.max_bytes == 0:
            return self.nbytes
        now = self._clock()
        rows = [
            (prediction_id, model, version, array.dtype.str, _shape_text(array), now, array.tobytes())
            for prediction_id, array in zip(ids, arrays, strict=True)
        ]
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT INTO inputs (id, model, version, dtype, shape, created, pixels) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return self._evict(now)

    def get(self, prediction_id: str) -> CachedInput | None:
        """The entry, or None if unknown, expired or evicted."""
        with self._lock:
            row = self._db.execute(
                "SELECT model, version, dtype, shape, created, pixels FROM inputs WHERE id = ? AND created > ?",
                (prediction_id, self._clock() - self.ttl_seconds),
            ).fetchone()
        if row is None:
            return None
        model, version, dtype, shape, created, pixels = row
        array = np.frombuffer(pixels, dtype=np.dtype(dtype)).reshape(tuple(int(n) for n in shape.split(",") if n))
        return CachedInput(model, version, array, created)

    # ------------------------------------------------------------------ inside the lock

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE (takes the write lock, waiting up to the busy timeout) ... COMMIT, or ROLLBACK."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _used(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self._page_size

    def _evict(self, now: float) -> int:
        """Drop what expired, then the oldest entries while over the budget; returns `nbytes` after."""
        self._db.execute("DELETE FROM inputs WHERE created <= ?", (now - self.ttl_seconds,))
        used = self._used()
        # Over the budget, drop down to 15/16 of it, so that a full cache evicts once every few
        # hundred puts, not on each one (an eviction costs about as much as the put).
        target = self.max_bytes - self.max_bytes // 16
        while used > self.max_bytes:
            # the oldest entries whose own bytes cover the excess; rows share pages, so look again after
            excess, freed, last = used - target, 0, None
            oldest_first = self._db.execute("SELECT seq, length(id) + length(pixels) FROM inputs ORDER BY seq")
            for seq, size in oldest_first:
                freed, last = freed + size, seq
                if freed >= excess:
                    break
            oldest_first.close()
            if last is None:
                break  # nothing left but the schema's own pages
            self._db.execute("DELETE FROM inputs WHERE seq <= ?", (last,))
            used = self._used()
        return used
