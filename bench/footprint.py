"""The figures the Kubernetes manifests are sized from: cold start to ready and peak memory.

    python bench/footprint.py                        # the shipped store in models/, 5 s of load per model
    python bench/footprint.py --models /tmp/store --duration 2

Starts `python -m service` as the container does (default settings, one worker), times it
from spawn to /health/ready == 200, then puts a light, bounded load on it over 127.0.0.1:
per model, `--concurrency` clients posting one image each for `--duration` seconds, then a
few all-layer activations (npz) and Grad-CAM requests for the images just predicted, which
are the requests that allocate the most. Prints a JSON report: cold start, resident memory
(VmRSS at ready and after, VmHWM peak) and the exit code after SIGTERM.

deploy/k8s/base/deployment.yaml records the figures it was sized from in its annotations
(`keras-serve/measured-*`); tests/deploy/test_k8s.py checks the memory limit against them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_bench import REPO, digit_png, free_port, fruit_jpeg, load, rss_bytes, start, stop, wait_ready  # noqa: E402

MiB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO / "models", help="model store (default: models/)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of predict load per model")
    parser.add_argument("--concurrency", type=int, default=4, help="clients during the predict load")
    parser.add_argument("--inspections", type=int, default=3, help="activations + Grad-CAM requests per model")
    parser.add_argument("--timeout", type=float, default=300.0, help="longest wait for readiness")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {key: value for key, value in os.environ.items() if key != "API_KEY"}
    environment |= {"MODEL_DIR": str(args.models.resolve()), "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"footprint-{port}.log"
    report: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "store": sorted(p.name for p in args.models.iterdir() if p.is_dir()),
    }
    process = start([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)], environment, log)
    try:
        report["cold_start_seconds"] = round(wait_ready(url, process, args.timeout), 2)
        report["rss_at_ready_mib"] = round(rss_bytes(process.pid)[0] / MiB)
        client = httpx.Client(base_url=url, timeout=60)
        names = [model["name"] for model in client.get("/models").raise_for_status().json()["models"]]
        report["load"] = {}
        for name in names:
            image, filename = (digit_png(), "seven.png") if name == "digits" else (fruit_jpeg(), "fruit.jpg")
            predict = f"{url}/models/{name}/predict"
            summary = load(predict, image, filename, args.concurrency, args.duration)
            for _ in range(args.inspections):
                answer = client.post(f"/models/{name}/predict", files={"file": (filename, image)}).raise_for_status()
                prediction = answer.json()["predictions"][0]["id"]
                client.get(f"/activations/{prediction}", params={"format": "npz"}).raise_for_status()
                client.get(f"/activations/{prediction}/gradcam").raise_for_status()
            report["load"][name] = {k: summary[k] for k in ("requests", "errors", "throughput_rps", "p50_ms")}
        report["rss_after_load_mib"], peak = (round(value / MiB) for value in rss_bytes(process.pid))
        report["peak_rss_mib"] = peak
    finally:
        report["exit_code_after_sigterm"] = stop(process)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
