"""End-to-end batch scoring: PNG files on disk -> the scoring CLI -> CSV, with the shipped digits model.

    python bench/bench_scoring.py [--count 5000] [--batch-size 64] [--concurrency 4]

Writes `--count` 28x28 digit PNGs (the last images of MNIST's training file when
../shared/datasets/mnist/mnist_train.npz exists, else synthetic digits) into class folders
in a temporary directory, starts `python -m service` on a free 127.0.0.1 port with the
model store (`models/` by default; or pass `--url` to use a running service), scores a
small warm-up set, then times `python -m service.client score ... --out results.csv` as a
subprocess: the figure includes the command's start-up, reading the files, the requests,
the server's decoding and inference, and writing the CSV. Goal: >= 1,000 images/s.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "datasets" / "mnist" / "mnist_train.npz"


def digit_images(count: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(images, labels, source): MNIST's last `count` training images, or synthetic digits."""
    if MNIST.exists():
        with np.load(MNIST) as data:
            return data["x_train"][-count:], data["y_train"][-count:], f"{MNIST} (last {count} training images)"
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, count).astype(np.uint8)
    images = rng.integers(0, 40, (count, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        row = 3 + 2 * int(label)
        image[row : row + 3, 5:23] = 255  # a bar whose height encodes the label (not a real digit)
    return images, labels, "synthetic (no MNIST file found)"


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray) -> list[Path]:
    paths = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / str(int(label)) / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def service(model_dir: Path, log_path: Path) -> Iterator[str]:
    """Run `python -m service` on a free port until the block ends; yields its URL once ready."""
    port = free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", RELOAD_INTERVAL_SECONDS="0")
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--model-dir", str(model_dir)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() - started > 180:
                raise RuntimeError(f"the service did not become ready; see {log_path}:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        print(f"service ready at {url} in {time.monotonic() - started:.1f} s")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def score(url: str, model: str, inputs: list[str], out: Path, batch_size: int, concurrency: int) -> tuple[float, str]:
    """Run the CLI; returns (wall seconds, its stdout)."""
    command = [
        sys.executable, "-m", "service.client", "score", "--url", url, "--model", model, *inputs,
        "--out", str(out), "--overwrite", "--batch-size", str(batch_size), "--concurrency", str(concurrency),
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"the scoring command failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return elapsed, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--url", default=None, help="use this running service instead of starting one")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best and the median are reported")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        folder = Path(tmp)
        images, labels, source = digit_images(args.count)
        started = time.perf_counter()
        paths = write_pngs(folder / "digits", images, labels)
        print(f"wrote {len(paths)} PNGs from {source} in {time.perf_counter() - started:.1f} s")

        with contextlib.ExitStack() as stack:
            url = args.url or stack.enter_context(service(args.model_dir, folder / "service.log"))
            warm = folder / "warm"
            warm.mkdir()
            for path in paths[:256]:
                os.link(path, warm / f"{path.parent.name}-{path.name}")
            score(url, args.model, [str(warm)], folder / "warm.csv", args.batch_size, args.concurrency)

            times, stdout = [], ""
            for _ in range(args.repeat):
                elapsed, stdout = score(
                    url, args.model, [str(folder / "digits")], folder / "results.csv", args.batch_size, args.concurrency
                )
                times.append(elapsed)

        with open(folder / "results.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        errors = sum(1 for row in rows if row["error"])
        accuracy = re.search(r"accuracy: ([0-9.]+)", stdout)

    best, median = min(times), float(np.median(times))
    print(
        f"scored {len(rows)} images ({errors} errors) with --batch-size {args.batch_size} "
        f"--concurrency {args.concurrency}, {args.repeat} runs"
    )
    print(f"end to end (CLI process wall time, start-up included): best {best:.2f} s, median {median:.2f} s")
    print(f"images/s: best {len(paths) / best:.0f}, median {len(paths) / median:.0f} (goal >= 1000)")
    if accuracy:
        print(f"accuracy on these images (training images, not a held-out figure): {accuracy.group(1)}")


if __name__ == "__main__":
    main()
