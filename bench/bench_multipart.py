"""Multipart parsing: python-multipart (what the service uses) against the hand-written parser it replaced.

    python bench/bench_multipart.py

Issue 14 asked to keep the maintained parser unless the hand-written one is at least 20%
faster end to end. This times both on the same bodies, in-process, and prints the time per
body next to the service's time per request (pass `--request-ms`, e.g. digits' p50 over
loopback from `run_all.py`) so the end-to-end share is plain. The hand-written parser is
kept here, and only here, as the reference (it was `service/api/body.py:parse_multipart`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.api.body import _read_multipart  # noqa: E402


class _Request:
    """What `_read_multipart` reads from a Starlette request: the headers and the body stream."""

    def __init__(self, body: bytes, content_type: str, chunk: int = 65536) -> None:
        self.headers = {"content-type": content_type}
        self._chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]

    async def stream(self):
        for chunk in self._chunks:
            yield chunk


_PARAM = re.compile(r';\s*([A-Za-z0-9_\-*]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def _header_params(value: str) -> tuple[str, dict[str, str]]:
    kind = value.split(";", 1)[0].strip().lower()
    params = {}
    for key, raw in _PARAM.findall(value):
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[key.lower()] = raw
    return kind, params


def hand_written(body: bytes, content_type: str) -> Iterator[tuple[str, str | None, bytes]]:
    """The replaced parser, verbatim but for its error handling (bodies here are well formed)."""
    _, params = _header_params(content_type)
    delimiter = b"--" + params["boundary"].encode("ascii")
    position = body.find(delimiter) + len(delimiter)
    separator = b"\r\n" + delimiter
    while not body.startswith(b"--", position):
        position += 2
        end = body.find(separator, position)
        split = body.find(b"\r\n\r\n", position, end + 2)
        name, filename = None, None
        for line in body[position:split].split(b"\r\n"):
            header, _, value = line.decode("utf-8", "replace").partition(":")
            if header.strip().lower() == "content-disposition":
                _, disposition = _header_params(value)
                name = disposition.get("name")
                filename = disposition.get("filename", disposition.get("filename*"))
        yield name, filename, body[split + 4 : end]
        position = end + len(separator)


def form(files: list[bytes]) -> tuple[bytes, str]:
    boundary = os.urandom(12).hex()
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def per_call_us(function, seconds: float) -> float:
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        function()
        calls += 1
    return elapsed / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--request-ms", type=float, default=2.0, help="the service's time per request, for the share")
    args = parser.parse_args()
    cases = {
        "one 123-byte PNG (a digit)": [os.urandom(123)],
        "one 30 KB JPEG-sized part": [os.urandom(30_000)],
        "64 parts of 100 KB": [os.urandom(100_000) for _ in range(64)],
        "one 10 MB part": [os.urandom(10_000_000)],
    }
    loop = asyncio.new_event_loop()
    print("| body | hand-written, us | python-multipart, us | difference per request |")
    print("|---|---|---|---|")
    for label, files in cases.items():
        body, content_type = form(files)
        parsed = loop.run_until_complete(_read_multipart(_Request(body, content_type), 64))
        assert parsed.inputs == files and [c for _, _, c in hand_written(body, content_type)] == files
        seconds = args.seconds if len(body) < 1_000_000 else args.seconds * 3
        old, new = [], []
        for _ in range(args.rounds):  # interleaved: a noisy neighbour hits both alike
            old.append(per_call_us(lambda b=body, c=content_type: list(hand_written(b, c)), seconds))
            new.append(
                per_call_us(
                    lambda b=body, c=content_type: loop.run_until_complete(_read_multipart(_Request(b, c), 64)), seconds
                )
            )
        share = (min(new) - min(old)) / (args.request_ms * 1000)
        print(f"| {label} | {min(old):.1f} | {min(new):.1f} | {share:+.1%} of a {args.request_ms} ms request |")


if __name__ == "__main__":
    main()
