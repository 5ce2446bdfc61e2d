"""Issue 14's isolation figure: /predict p99 for digits at concurrency 8, without and with
clients hammering activations (cycling layer sets) and Grad-CAM (random classes).

    python bench/bench_isolation.py                        # serves models/digits/1 on a free port
    python bench/bench_isolation.py --url http://127.0.0.1:8000 --rounds 6 --requests 1500

Phases alternate (quiet, hammered, quiet, hammered, ...) so that drift on a shared machine
lands on both sides; latencies are pooled per kind of phase. Predictions go through the lean
closed-loop client in `bench/loadgen.py`; the inspection clients use httpx in a process of
their own, each sending its next request as soon as the last one is answered (after a 503
they wait 20 ms, not the Retry-After: they are meant to press). The figure is
`ratio = p99 hammered / p99 quiet` (issue 14: at most 2, with no prediction error). Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import multiprocessing
import os
import queue
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.loadgen import multipart_request, run_load  # noqa: E402
from bench.run_bench import SETTLE_SECONDS, wait_settled  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def digit_png() -> bytes:
    image = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(image).line([(8, 6), (20, 6), (12, 24)], fill=255, width=3)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Figures:
    quiet_ms: list[float] = field(default_factory=list)
    hammered_ms: list[float] = field(default_factory=list)
    prediction_statuses: Counter = field(default_factory=Counter)
    inspection_statuses: Counter = field(default_factory=Counter)
    inspection_requests: int = 0

    @staticmethod
    def _p(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    def summary(self) -> dict:
        quiet99, hammered99 = self._p(self.quiet_ms, 99), self._p(self.hammered_ms, 99)
        return {
            "quiet": {"requests": len(self.quiet_ms), "p50_ms": self._p(self.quiet_ms, 50), "p99_ms": quiet99},
            "hammered": {
                "requests": len(self.hammered_ms),
                "p50_ms": self._p(self.hammered_ms, 50),
                "p99_ms": hammered99,
            },
            "ratio_p99": hammered99 / quiet99 if quiet99 else float("nan"),
            "prediction_statuses": dict(self.prediction_statuses),
            "inspection_requests": self.inspection_requests,
            "inspection_statuses": dict(self.inspection_statuses),
        }


async def _set_up(client: httpx.AsyncClient) -> tuple[list[str], list[str], str]:
    """The digits model's layer and class names, and the id of a prediction to inspect."""
    card = (await client.get("/models/digits")).json()
    layers = [layer["name"] for layer in card["layers"]]
    classes = card["classes"] if "classes" in card else card["card"]["class_names"]
    files = {"file": ("d.png", digit_png(), "image/png")}
    prediction = (await client.post("/models/digits/predict", files=files)).json()
    return layers, classes, prediction["predictions"][0]["id"]


async def _inspect(
    client: httpx.AsyncClient,
    setup: tuple[list[str], list[str], str],
    hammer: Event,
    done: Event,
    statuses: Counter,
    seed: int,
) -> None:
    """One hammering client: activations for random layer sets and Grad-CAM for random classes
    while `hammer` is set, until `done` is."""
    rng = random.Random(seed)
    layers, classes, prediction_id = setup
    while not done.is_set():
        if not hammer.is_set():
            await asyncio.sleep(0.01)
            continue
        if rng.random() < 0.3:
            response = await client.get(
                f"/activations/{prediction_id}/gradcam", params={"class": rng.choice(classes), "format": "json"}
            )
        else:
            chosen = rng.sample(layers, rng.randint(1, min(4, len(layers))))
            response = await client.get(f"/activations/{prediction_id}", params={"layers": ",".join(chosen)})
        statuses[str(response.status_code)] += 1
        if response.status_code == 503:
            await asyncio.sleep(0.02)


def _inspectors(url: str, count: int, ready: Event, hammer: Event, done: Event, results: Queue) -> None:
    """The inspection clients' process: `count` clients on one event loop. `ready` is set once
    they are set up; their statuses go to `results` at the end."""
    statuses: Counter = Counter()

    async def run() -> None:
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30)) for _ in range(count)
            ]
            setups = await asyncio.gather(*(_set_up(client) for client in clients))
            ready.set()
            await asyncio.gather(
                *(
                    _inspect(client, setup, hammer, done, statuses, seed)
                    for seed, (client, setup) in enumerate(zip(clients, setups, strict=True))
                )
            )

    try:
        asyncio.run(run())
    finally:
        results.put(dict(statuses))


async def measure(url: str, rounds: int, requests: int, concurrency: int = 8, inspectors: int = 3) -> Figures:
    """Alternate quiet and hammered phases of `requests` predictions each, `rounds` of each.

    The inspection clients run in a process of their own: on this process's event loop, their
    handling of large activation bodies delayed the reading of prediction answers, and that
    delay was timed as prediction latency.
    """
    figures = Figures()
    predict = multipart_request(url + "/models/digits/predict", digit_png())
    context = multiprocessing.get_context("spawn")
    ready, hammer, done, results = context.Event(), context.Event(), context.Event(), context.Queue()
    process = context.Process(target=_inspectors, args=(url, inspectors, ready, hammer, done, results), daemon=True)
    process.start()
    try:
        await run_load(url + "/models/digits/predict", predict, concurrency, total=200, warmup=0)  # warm-up
        await asyncio.to_thread(_wait_ready, ready, process, 120)
        for _ in range(rounds):
            quiet = await run_load(url + "/models/digits/predict", predict, concurrency, total=requests, warmup=0)
            figures.quiet_ms += quiet.latencies_ms
            figures.prediction_statuses.update(quiet.statuses)
            hammer.set()
            await asyncio.sleep(0.5)  # the inspection clients are pressing before predictions are timed
            try:
                hammered = await run_load(
                    url + "/models/digits/predict", predict, concurrency, total=requests, warmup=0
                )
            finally:
                hammer.clear()
            figures.hammered_ms += hammered.latencies_ms
            figures.prediction_statuses.update(hammered.statuses)
    finally:
        done.set()
        try:
            statuses = results.get(timeout=60)  # before joining: the process ends once its put is read
        except queue.Empty:
            statuses = None
        process.join(30)
    if statuses is None or process.exitcode != 0:
        raise SystemExit(f"the inspection clients' process failed (exit code {process.exitcode})")
    figures.inspection_statuses.update(statuses)
    figures.inspection_requests = sum(statuses.values())
    return figures


def _wait_ready(ready: Event, process: multiprocessing.process.BaseProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if not process.is_alive():
            raise SystemExit(f"the inspection clients' process failed while setting up (exit code {process.exitcode})")
        if time.monotonic() > deadline:
            raise SystemExit(f"the inspection clients were not set up after {timeout:g} s")


@contextlib.contextmanager
def served_digits(env: dict[str, str]):
    """`python -m service` over a store holding only models/digits/1, on a free 127.0.0.1 port."""
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as probe:
        store = Path(tmp) / "store"
        (store / "digits").mkdir(parents=True)
        (store / "digits" / "1").symlink_to(REPO / "models" / "digits" / "1")
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        environment = os.environ | {"MODEL_DIR": str(store), "RELOAD_INTERVAL_SECONDS": "0", "LOG_LEVEL": "warning"}
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=environment | env,
            stdout=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                        break
                time.sleep(0.2)
            else:
                raise SystemExit("the service did not become ready")
            yield url
        finally:
            process.terminate()
            process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running service with the digits model; default: start one")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=1000, help="predictions per phase")
    parser.add_argument("--inspectors", type=int, default=3, help="hammering inspection clients")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    def run(url: str) -> dict:
        # Ready means predictions are served; the Keras loads and warm-ups follow in the background
        # and must not share the CPU with the first phase. With several workers, /health/ready
        # answers for one of them: the pause covers the other's.
        wait_settled(url)
        time.sleep(SETTLE_SECONDS)
        figures = asyncio.run(measure(url, args.rounds, args.requests, inspectors=args.inspectors))
        return figures.summary()

    if args.url:
        summary = run(args.url.rstrip("/"))
    else:
        with served_digits({}) as url:
            summary = run(url)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
