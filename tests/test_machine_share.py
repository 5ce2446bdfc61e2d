"""The lock that keeps `exclusive` tests alone under xdist (tests/conftest.py), driven by threads:
flock(2) locks belong to open files, so two opens in one process contend like two workers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.conftest import _machine_share


class Holder(threading.Thread):
    """Takes the share, notes when it got it, and keeps it until released."""

    def __init__(self, folder: Path, name: str, exclusive: bool, events: list[str]) -> None:
        super().__init__(daemon=True)
        self.folder, self.label, self.exclusive, self.events = folder, name, exclusive, events
        self.release = threading.Event()

    def run(self) -> None:
        with _machine_share(self.folder, self.exclusive):
            self.events.append(f"{self.label} in")
            self.release.wait(10)
            self.events.append(f"{self.label} out")


def _settle() -> None:
    time.sleep(0.3)  # long enough for a thread that could take the lock to have taken it


def test_ordinary_tests_share_and_an_exclusive_one_waits_for_them_then_holds_back_new_ones(tmp_path):
    events: list[str] = []
    first, second = Holder(tmp_path, "a", False, events), Holder(tmp_path, "b", False, events)
    first.start(), second.start()
    _settle()
    assert sorted(events) == ["a in", "b in"]  # side by side

    alone = Holder(tmp_path, "x", True, events)
    alone.start()
    _settle()
    later = Holder(tmp_path, "c", False, events)
    later.start()
    _settle()
    assert sorted(events) == ["a in", "b in"]  # x waits for a and b; c waits behind x

    first.release.set(), second.release.set()
    _settle()
    assert events[2:] in (["a out", "b out", "x in"], ["b out", "a out", "x in"])
    alone.release.set()
    _settle()
    assert events[5:] == ["x out", "c in"]
    later.release.set()
    for thread in (first, second, alone, later):
        thread.join(5)
    assert events[-1] == "c out"
