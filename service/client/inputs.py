"""Which files a scoring run covers: files, folders (recursive), globs and path lists."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)
"""Files picked up when walking a folder (a file named explicitly is always scored)."""

LIST_SUFFIXES = frozenset({".txt", ".lst"})
"""A file with one of these suffixes lists paths, one per line (blank lines and `#` comments skipped)."""


def path_key(path: str) -> str:
    """The identity of a path across runs (what `--resume` compares): absolute and normalised."""
    return os.path.normcase(os.path.abspath(path))


@dataclass
class Inputs:
    """The expanded inputs, in a stable order, each path once.

    Attributes:
        paths: files to score (existing when expanded).
        missing: named paths that do not exist; each becomes an error row.
        warnings: globs that matched nothing, unreadable lists.
    """

    paths: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set, repr=False)

    def _add(self, path: str, bucket: list[str]) -> None:
        key = path_key(path)
        if key not in self._seen:
            self._seen.add(key)
            bucket.append(path)

    def __len__(self) -> int:
        return len(self.paths) + len(self.missing)


def _walk(folder: str) -> Iterator[str]:
    """Image files under `folder`, recursively, sorted, skipping hidden files and folders.

    Symbolic links are followed, each folder once (a link to a parent would loop), and a folder
    is listed under its own path rather than a link's (its name may be a class). Entries that are
    not regular files (a FIFO, a dangling link) are listed too: reading them makes error rows."""
    walked: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        try:
            stat = os.stat(root)
        except OSError:
            dirs[:] = []
            continue
        if (stat.st_dev, stat.st_ino) in walked:
            dirs[:] = []  # reached again through a link: its images are listed already
            continue
        walked.add((stat.st_dev, stat.st_ino))
        visible = sorted(d for d in dirs if not d.startswith("."))
        links = [d for d in visible if os.path.islink(os.path.join(root, d))]
        dirs[:] = [d for d in visible if d not in links] + links  # real folders first: walked under their names
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                yield os.path.join(root, name)


def _read_list(list_file: str) -> Iterator[str]:
    """Entries of a path list; a relative entry is taken from the working directory if it exists
    there, else from the list's own folder."""
    base = os.path.dirname(list_file)
    with open(list_file, encoding="utf-8", errors="surrogateescape") as handle:  # names as the file system has them
        for line in handle:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            if not os.path.isabs(entry) and not os.path.exists(entry) and os.path.exists(os.path.join(base, entry)):
                entry = os.path.join(base, entry)
            yield entry


def _expand_one(arg: str, found: Inputs, allow_lists: bool) -> None:
    if os.path.isdir(arg):
        for path in _walk(arg):
            found._add(path, found.paths)
    elif os.path.isfile(arg):
        if allow_lists and os.path.splitext(arg)[1].lower() in LIST_SUFFIXES:
            try:
                entries = list(_read_list(arg))
            except (OSError, UnicodeDecodeError) as exc:
                found.warnings.append(f"cannot read the list {arg}: {exc}")
                return
            for entry in entries:
                _expand_one(entry, found, allow_lists=False)
        else:
            found._add(arg, found.paths)
    elif glob.has_magic(arg):
        matches = sorted(glob.glob(arg, recursive=True))
        if not matches:
            found.warnings.append(f"no file matches {arg}")
        for match in matches:
            _expand_one(match, found, allow_lists=False)
    else:
        found._add(arg, found.missing)


def expand_inputs(args: Iterable[str]) -> Inputs:
    """Expand command-line inputs into the files to score.

    Args:
        args: files, folders (walked recursively for image files), globs (`**` allowed), or
            `.txt`/`.lst` files listing any of those, one per line.

    Returns:
        The `Inputs`: each file once, in the order given (folders sorted).
    """
    found = Inputs()
    for arg in args:
        _expand_one(os.fspath(arg), found, allow_lists=True)
    return found
