"""Issue 13's figure: one Open Inference Protocol client vs the model's own in-process throughput.

    python bench/bench_oip.py                                 # models/digits, 15 rounds of 2 s slices
    python bench/bench_oip.py --duration 1 --rounds 3         # a smoke run

One `tritonclient.http` client sends 64-image UINT8 requests for digits with binary tensor
data (the client's default) back to back to `python -m service` on 127.0.0.1 and counts
images/s. The ceiling is the same runtime the service chose for the model (OpenVINO, ONNX
Runtime or TensorFlow, read from `/models/{name}`, built and gated by the same
`service.runtimes.choose_runtime`) on the same 64 images in full batches of MAX_BATCH_SIZE, in a
separate process that loads the model once, no HTTP. The two take turns in short slices (each
idle while the other runs), so drift on a shared machine hits both alike; the figure is the
median of the per-round ratios (target >= 0.8). Writes `bench/results/oip-<time>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from run_bench import free_port, start, stop, wait_ready  # noqa: E402

TARGET = 0.8
BATCH = 64


def digit_batch(size: int, height: int, width: int) -> np.ndarray:
    """`size` drawn digits (strokes at varied places), uint8 (size, height, width, 1)."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(size):
        image = Image.new("L", (width, height), 0)
        points = [(int(x), int(y)) for x, y in rng.uniform(4, min(width, height) - 4, (3, 2))]
        ImageDraw.Draw(image).line(points, fill=255, width=3)
        images.append(np.asarray(image, np.uint8)[..., None])
    return np.stack(images)


_WORKER = """
import os, sys, time
sys.path.insert(0, {repo!r})
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
from modelcard import CARD_FILE, MODEL_FILE, ModelCard, load_verified_model
from service.config import Settings
from service.inference import Classifier, configure_tensorflow_threads
from service.runtimes import choose_runtime
settings = Settings(inference_runtime={runtime!r}, inference_precision={precision!r})
configure_tensorflow_threads(settings.tf_intra_op_threads, settings.tf_inter_op_threads)
card = ModelCard.model_validate_json(open(os.path.join({folder!r}, CARD_FILE)).read())
from pathlib import Path
model = load_verified_model(Path({folder!r}) / MODEL_FILE, card.sha256)
size = settings.max_batch_size
reference = Classifier(model, card.input, card.num_classes, size, settings.pad_batches)
reference.warm()
classifier = choose_runtime(model, card, Path({folder!r}), settings, reference).runtime  # gated and warmed
assert classifier.name == {runtime!r}, classifier.name
images = np.load({pixels!r}).astype(np.float32)
batches = [images[i : i + size] for i in range(0, len(images), size)]
print("ready", flush=True)
for line in sys.stdin:
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < float(line):
        for batch in batches:
            classifier(batch)
        calls += 1
    print(calls * len(images) / (time.perf_counter() - started), flush=True)
"""


class InProcess:
    """The model's own batched call in a separate process, run for a slice on demand."""

    def __init__(self, folder: Path, pixels: np.ndarray, tmp: Path, runtime: str, precision: str) -> None:
        np.save(tmp / "pixels.npy", pixels)
        code = _WORKER.format(
            repo=str(REPO),
            folder=str(folder),
            pixels=str(tmp / "pixels.npy"),
            runtime=runtime,
            precision="bf16" if precision == "bf16" else "f32",
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout.readline().strip() == "ready"
        self.images_per_second(1.0)  # warm-up

    def images_per_second(self, seconds: float) -> float:
        self.process.stdin.write(f"{seconds}\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


class ProtocolClient:
    """One tritonclient.http client sending the 64 images as UINT8 binary tensor data."""

    def __init__(self, port: int, model: str, pixels: np.ndarray) -> None:
        import tritonclient.http as triton

        self.model, self.count = model, len(pixels)
        self.client = triton.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=60, network_timeout=60)
        self.tensor = triton.InferInput("pixels", list(pixels.shape), "UINT8")
        self.tensor.set_data_from_numpy(pixels)  # binary by default
        self.outputs = [triton.InferRequestedOutput("probabilities"), triton.InferRequestedOutput("label")]
        for _ in range(3):  # warm-up: connection, padded batch sizes
            self.client.infer(model, [self.tensor], outputs=self.outputs)

    def throughput(self, duration: float) -> dict:
        """Requests back to back for `duration` seconds: images/s and the median request latency."""
        requests, latencies, started = 0, [], time.perf_counter()
        while time.perf_counter() - started < duration:
            sent = time.perf_counter()
            result = self.client.infer(self.model, [self.tensor], outputs=self.outputs)
            latencies.append(time.perf_counter() - sent)
            requests += 1
        elapsed = time.perf_counter() - started
        assert result.as_numpy("probabilities").shape[0] == self.count
        return {
            "images_per_second": requests * self.count / elapsed,
            "requests": requests,
            "p50_ms": statistics.median(latencies) * 1000,
        }

    def close(self) -> None:
        self.client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per slice")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from modelcard import CARD_FILE, ModelCard, list_versions

    version = max(list_versions(args.models, args.model))
    card = ModelCard.model_validate_json((args.models / args.model / str(version) / CARD_FILE).read_text())
    pixels = digit_batch(BATCH, card.input.height, card.input.width)
    if card.input.channels != 1:
        pixels = np.repeat(pixels, card.input.channels, axis=-1)

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        (store / args.model).symlink_to((args.models / args.model).resolve())  # the one model, alone
        port = free_port()
        env = os.environ | {"MODEL_DIR": str(store), "RELOAD_INTERVAL_SECONDS": "0", "LOG_LEVEL": "warning"}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        process = start(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)], env, Path(tmp) / "log"
        )
        rounds, worker, client, runtime = [], None, None, {}
        try:
            wait_ready(f"http://127.0.0.1:{port}", process, timeout=180)
            client = ProtocolClient(port, args.model, pixels)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/models/{args.model}", timeout=30) as response:
                runtime = json.load(response)["runtime"]
            print(f"the service serves {args.model} v{version} on {runtime['in_use']} ({runtime['precision']})")
            worker = InProcess(
                args.models / args.model / str(version), pixels, Path(tmp), runtime["in_use"], runtime["precision"]
            )
            for index in range(args.rounds):
                protocol = client.throughput(args.duration)
                ceiling = worker.images_per_second(args.duration)
                ratio = protocol["images_per_second"] / ceiling
                rounds.append({"protocol": protocol, "in_process_images_per_second": ceiling, "ratio": ratio})
                print(
                    f"round {index + 1}: v2 client {protocol['images_per_second']:.0f} img/s "
                    f"(p50 {protocol['p50_ms']:.1f} ms per {BATCH} images), in-process {ceiling:.0f} img/s, "
                    f"ratio {ratio:.2f}",
                    flush=True,
                )
        finally:
            if worker is not None:
                worker.close()
            if client is not None:
                client.close()
            stop(process)

    ratio = statistics.median(r["ratio"] for r in rounds)
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": f"{args.model} v{version}",
        "runtime": runtime,
        "batch": BATCH,
        "duration_seconds": args.duration,
        "rounds": rounds,
        "median_ratio": ratio,
        "target": TARGET,
    }
    out = args.out or HERE / "results" / f"oip-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    verdict = "meets" if ratio >= TARGET else "misses"
    print(f"median ratio {ratio:.2f}: {verdict} the {TARGET} target; written to {out}")


if __name__ == "__main__":
    main()
