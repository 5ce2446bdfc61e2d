"""A small closed-loop HTTP/1.1 load generator: N keep-alive connections, one request in flight each.

Standard library only (uses uvloop when installed). Requests are encoded once up front and
responses parsed just enough to find their end, so the client spends far less CPU per request
than an HTTP library would: on a 2-core machine the server keeps most of the CPU.

    python bench/loadgen.py --url http://127.0.0.1:8000/models/digits/predict --image digit.png -c 32 -d 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Result:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(repr=False, default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def summary(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        out.update(
            throughput_rps=round(self.throughput, 1),
            p50_ms=round(self.percentile(50), 3),
            p90_ms=round(self.percentile(90), 3),
            p99_ms=round(self.percentile(99), 3),
            mean_ms=round(statistics.fmean(self.latencies_ms), 3) if self.latencies_ms else None,
        )
        return out


def multipart_request(url: str, image: bytes, filename: str = "image.png", headers: dict | None = None) -> bytes:
    """One POST of `image` as a multipart `file` part, encoded as raw HTTP/1.1 bytes."""
    parts = urlsplit(url)
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length)
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, body
        body += chunk[:-2]


async def run_load(
    url: str,
    request: bytes,
    concurrency: int,
    duration: float | None = None,
    total: int | None = None,
    warmup: float = 1.0,
) -> Result:
    """Send `request` over `concurrency` connections for `duration` seconds (or `total` requests).

    The first `warmup` seconds are not counted.
    """
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    result = Result(concurrency, 0, 0, 0.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    measure_from = started + warmup
    stop_at = measure_from + duration if duration else None
    remaining = [total] if total else None

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                now = loop.time()
                if stop_at is not None and now >= stop_at:
                    return
                if remaining is not None:
                    if remaining[0] <= 0:
                        return
                    if now >= measure_from:
                        remaining[0] -= 1
                sent = time.perf_counter()
                writer.write(request)
                status, _ = await _read_response(reader)
                elapsed = (time.perf_counter() - sent) * 1000
                if loop.time() >= measure_from:
                    result.latencies_ms.append(elapsed)
                    result.requests += 1
                    result.statuses[str(status)] = result.statuses.get(str(status), 0) + 1
                    if status != 200:
                        result.errors += 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(max(0.0, measure_from - loop.time()))
    t0 = time.perf_counter()
    await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - t0
    return result


def install_uvloop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("-n", "--requests", type=int, default=None, help="stop after this many instead")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    install_uvloop()
    headers = {"X-API-Key": args.api_key} if args.api_key else None
    request = multipart_request(args.url, args.image.read_bytes(), args.image.name, headers)
    duration = None if args.requests else args.duration
    result = asyncio.run(run_load(args.url, request, args.concurrency, duration, args.requests))
    print(json.dumps(result.summary(), indent=2))


if __name__ == "__main__":
    main()
