"""A one-line progress bar with rate and ETA, drawn on a terminal only."""

from __future__ import annotations

import shutil
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Counts finished images and redraws at most ten times a second.

    Args:
        total: images to score in this run.
        stream: where to draw (stderr).
        enabled: draw at all; callers pass `stream.isatty()` unless told otherwise.
    """

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total = total
        self.done = 0
        self.errors = 0
        self._stream = stream
        self._enabled = enabled and total > 0
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = -1  # `done` when last drawn

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def update(self, done: int, errors: int = 0) -> None:
        self.done += done
        self.errors += errors
        now = time.monotonic()
        if self._enabled and (now - self._last_draw >= 0.1 or self.done >= self.total):
            self._last_draw = now
            self._draw()

    def _draw(self) -> None:
        self._drawn = self.done
        elapsed = max(self.elapsed, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        errors = f"  {self.errors} error(s)" if self.errors else ""
        head = f"{self.done}/{self.total}"
        tail = f"{rate:7.1f} img/s  ETA {_clock(eta)}{errors}"
        width = shutil.get_terminal_size((80, 20)).columns
        bar_width = max(10, min(40, width - len(head) - len(tail) - 6))
        filled = int(bar_width * self.done / max(self.total, 1))
        bar = "#" * filled + "-" * (bar_width - filled)
        self._stream.write(f"\r{head} [{bar}] {tail}"[: width - 1])
        self._stream.flush()

    def close(self) -> None:
        if self._enabled:
            if self._drawn != self.done:
                self._draw()
            self._stream.write("\n")
            self._stream.flush()
