"""The scoring output: one row per image, as CSV or JSON Lines, appended and flushed as rows
complete, and read back by `--resume`.

A killed run can leave a partial last line; `open_output` keeps only complete rows before
appending, so that image is scored again and appears exactly once.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass
from typing import Any, TextIO

FIELDS = ("path", "label", "confidence", "top_k", "model", "version", "id", "error")


@dataclass
class Row:
    """One image's outcome: a prediction, or an `error` (then the prediction fields are None)."""

    path: str
    label: str | None = None
    confidence: float | None = None
    top_k: list[dict[str, Any]] | None = None
    model: str | None = None
    version: int | None = None
    id: str | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return bool(self.error)

    def outcome(self) -> Row:
        """Path, label and error only: what a run's summary and accuracy need once the row is
        written (measured: 748 bytes a row with a two-class top-k, 227 as its outcome)."""
        return Row(path=self.path, label=self.label, error=self.error)


def format_for(path: str, explicit: str | None = None) -> str:
    """ "csv" or "jsonl", from `explicit` or the output file's suffix."""
    if explicit:
        return explicit
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".txt", ""):
        return "csv"
    raise ValueError(f"cannot tell the output format from {path!r}: use .csv or .jsonl, or pass --format")


def _csv_line(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _encode(row: Row, fmt: str) -> str:
    if fmt == "jsonl":
        # A name that is not UTF-8 (bytes escaped as surrogates) is written as \udcXX escapes, so the
        # file stays UTF-8 for other tools and reads back byte for byte; a CSV holds its own bytes.
        ascii_only = not row.path.isascii() and _not_utf8(row.path)
        return json.dumps(asdict(row), ensure_ascii=ascii_only, separators=(",", ":")) + "\n"
    values = []
    for name in FIELDS:
        value = getattr(row, name)
        if value is None:
            value = ""
        elif name == "top_k":
            value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        values.append(value)
    return _csv_line(values)


def _optional(value: Any, cast: Any) -> Any:
    if value is None or value == "":
        return None
    return cast(value)


def _decode_csv(record: dict[str, str]) -> Row:
    top_k = record.get("top_k") or ""
    return Row(
        path=record["path"],
        label=_optional(record.get("label"), str),
        confidence=_optional(record.get("confidence"), float),
        top_k=json.loads(top_k) if top_k else None,
        model=_optional(record.get("model"), str),
        version=_optional(record.get("version"), int),
        id=_optional(record.get("id"), str),
        error=_optional(record.get("error"), str),
    )


def _decode_jsonl(record: dict[str, Any]) -> Row:
    return Row(path=str(record["path"]), **{name: record.get(name) for name in FIELDS[1:]})


def _complete_prefix(path: str) -> bytes:
    """The file's content up to and including its last newline (a killed writer's partial
    line is dropped)."""
    with open(path, "rb") as handle:
        data = handle.read()
    cut = data.rfind(b"\n") + 1
    return data[:cut]


def read_rows(path: str, fmt: str) -> list[Row]:
    """Rows already in an output file: every complete, well-formed one.

    Args:
        path: the output file.
        fmt: "csv" or "jsonl".

    Returns:
        The rows; a partial last line (a killed run) or a damaged line is left out, so its
        image is scored again.

    Raises:
        ValueError: a CSV whose header is not this tool's, or JSON lines none of which is a row
            (resuming would replace the file with the rows kept: none).
    """
    # surrogateescape: a file name that is not UTF-8 (as Linux allows) comes back byte for byte
    text = _complete_prefix(path).decode("utf-8", errors="surrogateescape")
    rows: list[Row] = []
    if fmt == "jsonl":
        lines = [line for line in text.split("\n") if line.strip()]  # not splitlines: U+2028 is no line end
        for line in lines:
            try:
                record = json.loads(line)
                if isinstance(record, dict) and record.get("path"):
                    rows.append(_decode_jsonl(record))
            except (json.JSONDecodeError, TypeError, ValueError):
                continue
        if lines and not rows:
            raise ValueError(f"{path} is not a scoring output ({len(lines)} line(s), none of them a scoring row)")
        return rows
    if not text:
        return rows
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if tuple(reader.fieldnames or ()) != FIELDS:
        raise ValueError(f"{path} is not a scoring output (columns {reader.fieldnames}, expected {list(FIELDS)})")
    try:
        for record in reader:
            if None in record or any(value is None for value in record.values()) or not record.get("path"):
                continue  # wrong number of fields
            try:
                rows.append(_decode_csv(record))
            except (ValueError, json.JSONDecodeError):
                continue
    except csv.Error:
        pass  # an unterminated quoted field at the very end
    return rows


class RowWriter:
    """Appends rows to the output file, flushing after each group so a kill loses at most a
    partial line (which `--resume` cuts off)."""

    def __init__(self, handle: TextIO, fmt: str) -> None:
        self._handle = handle
        self._fmt = fmt

    def write(self, rows: list[Row]) -> None:
        if rows:
            # One write per group: the lines reach the file together or not at all, short of a kill mid-call.
            self._handle.write("".join(_encode(row, self._fmt) for row in rows))
            self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def open_output(path: str, fmt: str, resume: bool, drop_errors: bool = False) -> tuple[RowWriter, list[Row]]:
    """Open the output for appending.

    Args:
        path: the output file (resuming needs a file, so no "-").
        fmt: "csv" or "jsonl".
        resume: keep the complete rows already there; otherwise start the file afresh.
        drop_errors: when resuming, keep only the rows without an error (the others get scored again).

    Returns:
        The writer and the rows kept from an earlier run.
    """
    kept: list[Row] = []
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if resume and os.path.exists(path):
        kept = read_rows(path, fmt)
        if drop_errors:
            kept = [row for row in kept if not row.failed]
    # Rewrite what is kept (atomically) rather than trust the old bytes: a partial or damaged
    # line must not end up glued to the next row appended.
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as handle:
        if fmt == "csv":
            handle.write(_csv_line(list(FIELDS)))
        for start in range(0, len(kept), 10_000):
            handle.write("".join(_encode(row, fmt) for row in kept[start : start + 10_000]))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    handle = open(path, "a", encoding="utf-8", errors="surrogateescape", newline="")  # noqa: SIM115 (the writer closes it)
    return RowWriter(handle, fmt), kept
