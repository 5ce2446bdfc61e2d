"""Issue 4's performance figures, measured in one run on this machine.

    python bench/run_bench.py                      # the shipped store in models/
    python bench/run_bench.py --models /tmp/store --duration 3   # a quick try on any store

Steps, each in its own process so they do not share CPU with one another:
1. cold start: `python -m service` on the store, from spawn to /health/ready == 200;
2. digits, one client: p50 latency of single-image /predict over loopback;
3. digits, 32 clients: requests/s; fruits, 16 clients: requests/s;
4. resident memory of the service (now and peak), then a clean SIGTERM;
5. the naive baseline (`bench/baseline_server.py`, model.predict per request): digits p50;
6. fruits in-process: the service's own compiled call on full batches, images/s.

HTTP load comes from `wrk` (Debian package) with `bench/wrk_post.lua` when it is installed
(p50/p90/p99 from its latency histogram), else from `bench/loadgen.py`.
Writes `bench/results/<timestamp>.json` and prints a table against the issue's targets.
TensorFlow thread settings come from the environment as for the service
(TF_INTRA_OP_THREADS, TF_INTER_OP_THREADS), batching from MAX_BATCH_SIZE / MAX_BATCH_WAIT_US.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import urlopen

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from loadgen import install_uvloop, multipart_request, run_load  # noqa: E402

TARGETS = {
    "digits_p50_speedup_vs_baseline": 25.0,
    "fruits_c16_vs_inprocess": 0.90,
    "digits_c32_rps": 1500.0,
    "cold_start_seconds": 10.0,
    "rss_gb": 1.5,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _own_rss(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


def rss_bytes(pid: int) -> tuple[int, int]:
    """(current, peak) resident set size of a server, from /proc (Linux): of the process itself, or
    with WORKERS > 1 of its largest child (the worker processes; the figure is per worker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    figures = [_own_rss(pid)]
    for child in children:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            figures.append(_own_rss(int(child)))
    return max(current for current, _ in figures), max(peak for _, peak in figures)


def wait_ready(url: str, process: subprocess.Popen, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urlopen(f"{url}/health/ready", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (URLError, OSError):
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{url} not ready after {timeout}s")


SETTLE_SECONDS = 5.0  # after every version has loaded: the activation warm-ups that follow them


def wait_settled(url: str, timeout: float = 300) -> float:
    """Wait until every version is loaded, Keras models included, and nothing runs in the background
    (`/health/ready`'s `background_work`: Keras loads and activation warm-ups); returns `time.monotonic()` then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urlopen(f"{url}/health/ready", timeout=5) as response:
                body = json.load(response)
        except HTTPError as error:  # 503 while a version failed: the body says the same
            body = json.load(error)
        versions = [v for m in body["models"].values() for v in m["versions"] if v["state"] != "failed"]
        loaded = all(v["state"] == "ready" and v.get("keras_loaded", True) for v in versions)
        if loaded and not body.get("background_work", 0):
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(f"{url}: versions still loading after {timeout}s")


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as handle:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def digit_png() -> bytes:
    image = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(image).line([(8, 6), (20, 6), (13, 23)], fill=255, width=3)  # a seven
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def fruit_jpeg() -> bytes:
    image = Image.new("RGB", (100, 100), (255, 255, 255))
    ImageDraw.Draw(image).ellipse([15, 15, 85, 85], fill=(200, 30, 40))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


WRK_SCRIPT = HERE / "wrk_post.lua"
# wrk runs for a time, not a number of requests: a fixed-count run takes this long per request
# (c=1 latency, the baseline) when it goes through wrk
WRK_SECONDS_PER_REQUEST = 0.005


def load(url: str, image: bytes, filename: str, concurrency: int, duration: float | None, total: int | None = None):
    """One multipart image per request at `concurrency`: through `wrk` when installed, else `loadgen`.

    wrk is a C load generator: on a 2-core machine it leaves more of the CPU to the server
    than any Python client, and it reports p99 from a full latency histogram.
    """
    if shutil.which("wrk"):
        seconds = duration if duration is not None else max(3.0, (total or 1000) * WRK_SECONDS_PER_REQUEST)
        return wrk_load(url, image, filename, concurrency, seconds)
    request = multipart_request(url, image, filename)
    result = asyncio.run(run_load(url, request, concurrency, duration=duration, total=total))
    return result.summary()


def wrk_load(url: str, image: bytes, filename: str, concurrency: int, seconds: float, json_body: bool = False) -> dict:
    """`wrk` with `bench/wrk_post.lua`: the same summary keys as `loadgen.Result.summary`."""
    boundary = "wrkboundary7MA4YWxkTrZu0gW"
    if json_body:
        body = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode()
        content_type = "application/json"
    else:
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + image
            + f"\r\n--{boundary}--\r\n".encode()
        )
        content_type = f"multipart/form-data; boundary={boundary}"
    with tempfile.NamedTemporaryFile(suffix=".body") as handle:
        handle.write(body)
        handle.flush()
        env = {**os.environ, "WRK_BODY": handle.name, "WRK_CONTENT_TYPE": content_type}
        threads = 1 if concurrency < 8 else 2
        command = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "10s"]
        output = subprocess.run(
            [*command, "-s", str(WRK_SCRIPT), url], env=env, capture_output=True, text=True, check=True
        ).stdout
    line = next(line for line in output.splitlines() if line.startswith("WRK_JSON "))
    figures = json.loads(line.removeprefix("WRK_JSON "))
    return {
        "concurrency": concurrency,
        "requests": figures["requests"],
        "errors": figures["non_2xx"] + figures["socket_errors"],
        "seconds": figures["seconds"],
        "throughput_rps": figures["throughput_rps"],
        "p50_ms": figures["p50_ms"],
        "p90_ms": figures["p90_ms"],
        "p99_ms": figures["p99_ms"],
        "max_ms": figures["max_ms"],
        "mean_ms": figures["mean_ms"],
        "load_generator": "wrk",
    }


def in_process_throughput(model_dir: Path, name: str, duration: float) -> dict:
    """The service's compiled call on full batches, in a fresh process: the ceiling for HTTP."""
    code = f"""
import json, os, sys, time
sys.path.insert(0, {str(REPO)!r})
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
from modelcard import CARD_FILE, MODEL_FILE, ModelCard, list_versions, load_verified_model
from service.config import Settings
from service.inference import Classifier, configure_tensorflow_threads
settings = Settings()
configure_tensorflow_threads(settings.tf_intra_op_threads, settings.tf_inter_op_threads)
folder = os.path.join({str(model_dir)!r}, {name!r}, str(max(list_versions({str(model_dir)!r}, {name!r}))))
card = ModelCard.model_validate_json(open(os.path.join(folder, CARD_FILE)).read())
model = load_verified_model(os.path.join(folder, MODEL_FILE), card.sha256)
classifier = Classifier(model, card.input, card.num_classes, settings.max_batch_size, settings.pad_batches)
classifier.warm()
rng = np.random.default_rng(0)
results = {{}}
for size in sorted({{16, settings.max_batch_size}}):
    batch = rng.integers(0, 256, (size, *card.input.shape)).astype(np.float32)
    classifier(batch)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < {duration}:
        classifier(batch)
        calls += 1
    results[size] = calls * size / (time.perf_counter() - started)
print(json.dumps({{"images_per_second_by_batch": results, "best": max(results.values())}}))
"""
    output = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--digits", default="digits", help="model name for the latency and c=32 runs")
    parser.add_argument("--fruits", default="fruits", help="model name for the c=16 vs in-process run")
    parser.add_argument("--digits-image", type=Path, help="image file to send (default: a drawn seven)")
    parser.add_argument("--fruits-image", type=Path, help="image file to send (default: a drawn red disc)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per throughput run")
    parser.add_argument("--latency-requests", type=int, default=2000)
    parser.add_argument("--baseline-requests", type=int, default=300)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    install_uvloop()
    models = args.models.resolve()
    present = {p.name for p in models.iterdir() if p.is_dir()} if models.is_dir() else set()
    digits_image = args.digits_image.read_bytes() if args.digits_image else digit_png()
    fruits_image = args.fruits_image.read_bytes() if args.fruits_image else fruit_jpeg()
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MODEL_DIR": str(models), "TF_CPP_MIN_LOG_LEVEL": "2", "RELOAD_INTERVAL_SECONDS": "0"}
    report: dict = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "store": {"path": str(models), "models": sorted(present)},
        "env": {k: v for k, v in os.environ.items() if k.startswith(("TF_", "MAX_", "PAD_"))},
    }

    # 1-4: the service
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spawned = time.monotonic()
    service = start(
        [sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"], env, logs / "service.log"
    )
    try:
        wait_ready(url, service, timeout=300)
        report["cold_start_seconds"] = round(time.monotonic() - spawned, 2)
        report["rss_at_ready_bytes"] = rss_bytes(service.pid)[0]
        print(f"cold start to ready: {report['cold_start_seconds']} s", flush=True)
        # ready means each model's newest version serves predictions; older ones, the Keras models and
        # the activation warm-ups follow in the background, and must not share the CPU with the measurements
        report["all_versions_loaded_seconds"] = round(wait_settled(url) - spawned, 2)
        print(f"every version loaded: {report['all_versions_loaded_seconds']} s", flush=True)
        time.sleep(SETTLE_SECONDS)
        if args.digits in present:
            route = f"{url}/models/{args.digits}/predict"
            load(route, digits_image, "digit.png", 1, 2.0)  # warm-up: connections, first-request paths
            report["digits_c1"] = load(route, digits_image, "digit.png", 1, None, args.latency_requests)
            print("digits c=1", report["digits_c1"], flush=True)
            report["digits_c32"] = load(route, digits_image, "digit.png", 32, args.duration)
            print("digits c=32", report["digits_c32"], flush=True)
        if args.fruits in present:
            route = f"{url}/models/{args.fruits}/predict"
            report["fruits_c16"] = load(route, fruits_image, "fruit.jpg", 16, args.duration)
            print("fruits c=16", report["fruits_c16"], flush=True)
        current, peak = rss_bytes(service.pid)
        report["rss_after_load_bytes"], report["rss_peak_bytes"] = current, peak
    finally:
        report["service_exit_code"] = stop(service)

    # 5: the naive baseline
    if args.digits in present:
        port = free_port()
        baseline = start(
            [
                sys.executable,
                str(HERE / "baseline_server.py"),
                "--port",
                str(port),
                "--model-dir",
                str(models),
                "--models",
                args.digits,
            ],
            env,
            logs / "baseline.log",
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}", baseline, timeout=300)
            route = f"http://127.0.0.1:{port}/models/{args.digits}/predict"
            report["baseline_digits_c1"] = load(route, digits_image, "digit.png", 1, None, args.baseline_requests)
            print("baseline digits c=1", report["baseline_digits_c1"], flush=True)
        finally:
            stop(baseline)

    # 6: the ceiling
    if args.fruits in present:
        report["fruits_in_process"] = in_process_throughput(models, args.fruits, args.duration)
        print("fruits in-process", report["fruits_in_process"], flush=True)

    report["figures"] = figures(report)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(table(report["figures"]))
    print(f"\nwritten to {args.out / (stamp + '.json')}")


def figures(report: dict) -> dict:
    out: dict = {"cold_start_seconds": report.get("cold_start_seconds")}
    if "digits_c1" in report and "baseline_digits_c1" in report:
        out["digits_p50_ms"] = report["digits_c1"]["p50_ms"]
        out["baseline_p50_ms"] = report["baseline_digits_c1"]["p50_ms"]
        out["digits_p50_speedup_vs_baseline"] = round(out["baseline_p50_ms"] / out["digits_p50_ms"], 1)
    if "digits_c32" in report:
        out["digits_c32_rps"] = report["digits_c32"]["throughput_rps"]
    if "fruits_c16" in report and "fruits_in_process" in report:
        out["fruits_c16_rps"] = report["fruits_c16"]["throughput_rps"]
        out["fruits_in_process_ips"] = round(report["fruits_in_process"]["best"], 1)
        out["fruits_c16_vs_inprocess"] = round(out["fruits_c16_rps"] / out["fruits_in_process_ips"], 3)
    peak = report.get("rss_peak_bytes")
    out["rss_gb"] = round(peak / 1e9, 3) if peak else None
    return out


def table(figures: dict) -> str:
    rows = ["| figure | measured | target | met |", "|---|---|---|---|"]
    checks = {
        "digits_p50_speedup_vs_baseline": ">=",
        "fruits_c16_vs_inprocess": ">=",
        "digits_c32_rps": ">=",
        "cold_start_seconds": "<=",
        "rss_gb": "<=",
    }
    for name, value in figures.items():
        target = TARGETS.get(name)
        met = ""
        if target is not None and value is not None:
            ok = value >= target if checks[name] == ">=" else value <= target
            met = "yes" if ok else "NO"
        shown_target = f"{checks.get(name, '')} {target}" if target is not None else ""
        rows.append(f"| {name} | {value} | {shown_target} | {met} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
