"""`--download`: fetch a dataset's public archive, check its sha256, unpack it safely."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from training.datasets import DatasetError
from training.tasks import Task


def _offline_help(task: Task, dest: Path) -> str:
    where = f"put the files in {dest}: {task.layout_hint}"
    if task.source is None:
        return f"{task.name}: there is no public archive to download; {where}"
    return f"download {task.source.url} on a machine with internet access and {where}"


def fetch(task: Task, dest: Path, url: str | None = None, sha256: str | None = None, timeout: float = 60) -> Path:
    """Download and unpack `task`'s archive into `dest`; returns the folder to load.

    Raises DatasetError when offline, on a checksum mismatch, or without a checksum.
    """
    dest = Path(dest)
    if not url:
        if task.source is None:
            raise DatasetError(_offline_help(task, dest))
        url = task.source.url
    expected = (sha256 or (task.source.sha256 if task.source else None) or "").lower()
    if not expected:
        raise DatasetError(
            f"{task.name}: no checksum is pinned for {url}; pass --sha256 HEX to verify the download "
            f"(an unchecked archive is never used), or {_offline_help(task, dest)}"
        )
    filename = task.source.filename if task.source else Path(url).name
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        archive = Path(tmp) / filename
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as out:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DatasetError(f"could not download {url} ({reason}); {_offline_help(task, dest)}") from None
        if digest.hexdigest() != expected:
            raise DatasetError(
                f"{url}: sha256 is {digest.hexdigest()}, expected {expected}; the download was discarded"
            )
        return _unpack(archive, dest)


def _unpack(archive: Path, dest: Path) -> Path:
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                target = (dest / member).resolve()
                if not target.is_relative_to(dest.resolve()):
                    raise DatasetError(f"{archive.name}: refusing member {member!r} outside the target folder")
            zf.extractall(dest)
            tops = {Path(m).parts[0] for m in zf.namelist() if Path(m).parts}
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
            tops = {Path(m).parts[0] for m in tf.getnames() if Path(m).parts}
    else:
        shutil.move(str(archive), dest / archive.name)
        return dest
    return dest / tops.pop() if len(tops) == 1 and (dest / next(iter(tops))).is_dir() else dest
