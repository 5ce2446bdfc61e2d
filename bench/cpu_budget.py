"""What the CPU leaves for the request path: the server's CPU per request against the model's own.

    python bench/cpu_budget.py                 # the shipped store, 6 s per load
    python bench/cpu_budget.py --seconds 10 --rounds 3

1. The service (`python -m service`, its defaults) under `wrk`: the CPU time of every process of
   the server per request, for `GET /health/live` at c=32 (an empty answer through the same
   server, middleware and router), digits `/predict` at c=32 and fruits `/predict` at c=16
   (`run_bench.py`'s images, one per multipart request).
2. In this process, once the server is stopped: the model's own CPU time per image, ONNX Runtime
   and OpenVINO (f32) built from the newest version's exported files as the service builds them
   (`service.runtimes.build_runtime`), with one thread and with one per core, at batches 1, 8
   and 32, in 3 rounds taken in turn, the best of each kept. The best img/s among them is the
   ceiling the targets are ratios of.
3. The arithmetic of issue 12's targets: a rate of `target x ceiling` on the cores the server
   had leaves so much CPU per request; less the model's (its most frugal figure) and an empty
   answer's, that is what multipart, decoding, preprocessing, batching, the answer and the input
   cache may take together, against what they take now.

Run it on an otherwise idle machine. Prints one JSON object (`--out` writes it too).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import numpy as np  # noqa: E402

from bench.run_bench import (  # noqa: E402
    digit_png,
    free_port,
    fruit_jpeg,
    start,
    stop,
    wait_ready,
    wait_settled,
    wrk_load,
)
from modelcard import CARD_FILE, ModelCard, list_versions  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
# issue 12: the service's rate over the best in-process batched throughput of the same model
TARGETS = {
    "digits": ("/models/digits/predict", digit_png, "d.png", 32, 0.5),
    "fruits": ("/models/fruits/predict", fruit_jpeg, "f.jpg", 16, 0.6),
}


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and every process below it, from /proc."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:  # exited meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
        pending += [int(child) for child in children]
    return total


def measured(pid: int, run) -> dict:
    """`run()` -> (requests answered, req/s); with the server's CPU per request and the cores it used."""
    cpu, wall = server_cpu_seconds(pid), time.monotonic()
    requests, rate = run()
    cpu, wall = server_cpu_seconds(pid) - cpu, time.monotonic() - wall
    return {
        "rps": round(rate),
        "cpu_ms_per_request": round(cpu / requests * 1000, 3),
        "cores": round(cpu / wall, 2),
    }


def wrk_get(url: str, concurrency: int, seconds: float) -> tuple[int, float]:
    """`wrk` GETs of `url`: (requests answered, req/s); any answer but 2xx or 3xx is an error."""
    output = subprocess.run(
        ["wrk", "-t2", f"-c{concurrency}", f"-d{seconds:g}s", url], capture_output=True, text=True, check=True
    ).stdout
    count, rate = re.search(r"(\d+) requests in", output), re.search(r"Requests/sec:\s+([\d.]+)", output)
    if count is None or rate is None or "Non-2xx" in output or "Socket errors" in output:
        raise RuntimeError(f"wrk: no rate, or errors:\n{output}")
    return int(count.group(1)), float(rate.group(1))


def wrk_post(url: str, image: bytes, filename: str, concurrency: int, seconds: float) -> tuple[int, float]:
    """`run_bench.wrk_load`: (requests answered, req/s); an error is fatal."""
    result = wrk_load(url, image, filename, concurrency, seconds)
    if result["errors"]:
        raise RuntimeError(f"{url}: {result['errors']} errors under load")
    return result["requests"], result["throughput_rps"]


def serve_and_load(store: Path, seconds: float, rounds: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {"MODEL_DIR": str(store), "RELOAD_INTERVAL_SECONDS": "0", "LOG_LEVEL": "warning"}
    log = Path(tempfile.mkdtemp()) / "server.log"
    process = start([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)], env, log)
    out: dict = {"empty": [], "digits": [], "fruits": []}
    try:
        wait_ready(url, process, 180)
        wait_settled(url)
        time.sleep(1)
        for _ in range(rounds):
            for task, (path, image, filename, concurrency, _) in TARGETS.items():
                body = image()
                wrk_load(url + path, body, filename, concurrency, 2)  # warm
                out["empty"].append(measured(process.pid, lambda: wrk_get(url + "/health/live", 32, seconds)))
                out[task].append(
                    measured(process.pid, lambda: wrk_post(url + path, body, filename, concurrency, seconds))  # noqa: B023
                )
    finally:
        stop(process)
    return out


def model_cpu(store: Path, task: str, seconds: float, rounds: int) -> list[dict]:
    """Each runtime and thread count on the newest version's exported files: img/s and CPU ms per
    image, each the best of `rounds` rounds taken in turn (a ceiling: the least disturbed round)."""
    from service.config import Settings
    from service.runtimes import build_runtime

    folder = store / task / str(max(list_versions(store, task)))
    card = ModelCard.model_validate_json((folder / CARD_FILE).read_text())
    runtimes = {}
    for name in ("onnxruntime", "openvino"):
        for threads in (0, 1):
            settings = Settings(_env_file=None, tf_intra_op_threads=threads, max_batch_size=32, pad_batches=False)
            runtimes[name, threads or os.cpu_count()] = build_runtime(name, "f32", folder, settings, card)
    batches = {
        size: np.random.default_rng(0).uniform(0, 255, (size, *card.input.shape)).astype(np.float32)
        for size in (1, 8, 32)
    }
    best: dict[tuple, dict] = {}
    for _ in range(rounds):
        for (name, threads), runtime in runtimes.items():
            for size, batch in batches.items():
                for _ in range(10):
                    runtime(batch)
                images, cpu, wall = 0, time.process_time(), time.perf_counter()
                while time.perf_counter() - wall < seconds:
                    runtime(batch)
                    images += size
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                row = best.setdefault((name, threads, size), {"runtime": name, "threads": threads, "batch": size})
                row["img_per_s"] = max(row.get("img_per_s", 0), round(images / wall))
                row["cpu_ms_per_image"] = min(row.get("cpu_ms_per_image", float("inf")), round(cpu / images * 1000, 3))
    return list(best.values())


def budget(task: str, served: list[dict], empty: list[dict], model: list[dict]) -> dict:
    """The CPU a request may take at the target rate, and what is left of it for the request path."""
    target = TARGETS[task][4]
    ceiling = max(row["img_per_s"] for row in model)
    cores = min(row["cores"] for row in served)
    allowed = cores / (target * ceiling) * 1000
    frugal = min(row["cpu_ms_per_image"] for row in model)
    empty_ms = min(row["cpu_ms_per_request"] for row in empty)
    now = min(row["cpu_ms_per_request"] for row in served)
    return {
        "target": f"{target} x {ceiling} img/s = {round(target * ceiling)} req/s",
        "ratio_now": round(max(row["rps"] for row in served) / ceiling, 2),
        "cpu_ms_allowed_per_request": round(allowed, 3),
        "model_ms_at_best": frugal,
        "empty_answer_ms": empty_ms,
        "left_for_the_request_path_ms": round(allowed - frugal - empty_ms, 3),
        # at most: in the service the model costs at least its most frugal figure
        "request_path_now_at_most_ms": round(now - frugal - empty_ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path(__file__).resolve().parents[1] / "models")
    parser.add_argument("--seconds", type=float, default=6.0, help="per load")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    served = serve_and_load(args.store, args.seconds, args.rounds)
    report: dict = {"served": served, "model": {}, "budget": {}}
    for task in TARGETS:
        report["model"][task] = model_cpu(args.store, task, 1.0, 3)
        report["budget"][task] = budget(task, served[task], served["empty"], report["model"][task])
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
