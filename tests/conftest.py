"""Shared by every test package: quiet TensorFlow's C++ logging before anything imports it, and
keep tests marked `exclusive` alone on the machine when pytest-xdist runs the suite in parallel.

`pyproject.toml` runs the suite on two xdist workers: most tests leave a core idle (servers
starting, clients waiting on sockets): in one process the suite took 382 s. Tests that time latency or
deadlines (`@pytest.mark.exclusive`) must not share the CPU with another test, so the workers take
a readers-writer lock around every test, from the setup of its fixtures to their teardown:

- an ordinary test holds the lock shared, so two of them run side by side;
- an exclusive test holds it alone, and first takes a gate that keeps new tests from starting
  while it waits for the running one to finish (otherwise a stream of ordinary tests could keep
  it waiting for ever).

The lock is `flock(2)` on two files in a folder the controller makes for the run and hands to
its workers. With `-n 0` (everything in turn, in one process) there is nothing to take. The
longest files are collected first, so that they start first (`LONGEST_FIRST`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The files that take longest (seconds on 2 cores, one process), handed to the workers first: a
# long file started last would leave the other worker idle at the end (xdist schedules whole
# files in collection order, with `--no-loadscope-reorder` in pyproject.toml).
LONGEST_FIRST = (
    "tests/training/test_cli.py",  # 63: eight real training runs
    "tests/reliability/test_load.py",  # 57: 20,000 requests
    "tests/reliability/test_fuzz.py",  # 44
    "tests/test_shipped_models.py",  # 43
    "tests/reliability/test_isolation.py",  # 37
    "tests/service/test_workers.py",  # 34: two servers of two workers each
    "tests/deploy/test_image_runtime.py",  # 20: a fresh virtualenv
)

LOCK_DIR_KEY = "keras_serve_lock_dir"  # in each worker's `config.workerinput`
_lock_dir = pytest.StashKey[Path]()  # in the controller's config


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("numprocesses", None) and not hasattr(config, "workerinput"):
        config.stash[_lock_dir] = Path(tempfile.mkdtemp(prefix="keras-serve-test-locks-"))


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_lock_dir, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist, in the controller: tell each worker where the run's lock files are."""
    node.workerinput[LOCK_DIR_KEY] = str(node.config.stash[_lock_dir])


@contextlib.contextmanager
def _flock(path: Path, operation: int) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, operation)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _machine_share(folder: Path, exclusive: bool) -> Iterator[None]:
    gate, tests = folder / "gate", folder / "tests"
    if exclusive:
        with _flock(gate, fcntl.LOCK_EX), _flock(tests, fcntl.LOCK_EX):
            yield
        return
    with open(tests, "a") as handle:
        # An exclusive test holds the gate while it waits for `tests` and while it runs, so this
        # waits for it; holding the gate shared, taking `tests` shared never waits.
        with _flock(gate, fcntl.LOCK_SH):
            fcntl.flock(handle, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Around each test's whole protocol: its fixtures' setup (servers start there), the test,
    and their teardown."""
    workerinput = getattr(item.config, "workerinput", None)
    if workerinput is None or LOCK_DIR_KEY not in workerinput:
        return (yield)
    with _machine_share(Path(workerinput[LOCK_DIR_KEY]), item.get_closest_marker("exclusive") is not None):
        return (yield)
