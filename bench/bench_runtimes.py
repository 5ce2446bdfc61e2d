"""In-process runtime comparison: per shipped model and runtime, one-image latency and batched throughput.

    python bench/bench_runtimes.py [--models digits fruits] [--seconds 2] [--bf16]

One process; every runtime of a model is built from the version's exports (the store's, else
exported into the cache), passes the service's parity gate first (refused ones are listed, not
timed), and the runtimes are measured interleaved (round-robin, `--rounds` times) so machine
noise hits them alike. Prints a Markdown table: median ms for one image, img/s at batch 16 and
at MAX_BATCH_SIZE (the service's padded calls), and the resident memory of the process.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from modelcard import CARD_FILE, MODEL_FILE, ModelCard, list_versions, load_verified_model  # noqa: E402
from service.config import Settings  # noqa: E402
from service.inference import Classifier, configure_tensorflow_threads  # noqa: E402
from service.runtimes import choose_runtime  # noqa: E402

TASKS = ["digits", "fruits", "signs", "catsdogs"]
NAMES = {"tensorflow": "TensorFlow", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def measure(call, batch: np.ndarray, seconds: float) -> float:
    """Median seconds per call over about `seconds` of calls."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        started = time.perf_counter()
        call(batch)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=TASKS)
    parser.add_argument("--store", type=Path, default=Path("models"))
    parser.add_argument("--seconds", type=float, default=1.0, help="per runtime, size and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="also OpenVINO bf16 where the gate accepts it")
    args = parser.parse_args()
    settings = Settings(_env_file=None)
    configure_tensorflow_threads(settings.tf_intra_op_threads, settings.tf_inter_op_threads)
    sizes = sorted({1, 16, settings.max_batch_size})
    rows = []
    for task in args.models:
        folder = args.store / task / str(max(list_versions(args.store, task)))
        card = ModelCard.model_validate_json((folder / CARD_FILE).read_text())
        model = load_verified_model(folder / MODEL_FILE, card.sha256)
        runtimes = {}
        for precision in ["f32", "bf16"] if args.bf16 else ["f32"]:
            for name in ("tensorflow", "onnxruntime", "openvino"):
                if precision == "bf16" and name != "openvino":
                    continue
                forced = settings.model_copy(update={"inference_runtime": name, "inference_precision": precision})
                reference = Classifier(model, card.input, card.num_classes, settings.max_batch_size)
                choice = choose_runtime(model, card, folder, forced, reference)
                used = next(c for c in choice.candidates if c.state == "in use")
                if used.runtime != name or used.precision != precision:
                    refused = next(c for c in choice.candidates if c.runtime == name and c.precision == precision)
                    print(f"{task} {name} {precision}: refused: {refused.reason}", file=sys.stderr)
                    continue
                runtimes[(name, precision)] = choice.runtime
        rng = np.random.default_rng(0)
        batches = {n: rng.integers(0, 256, (n, *card.input.shape)).astype(np.float32) for n in sizes}
        samples: dict[tuple, list[float]] = {}
        for _ in range(args.rounds):
            for key, runtime in runtimes.items():
                for n in sizes:
                    samples.setdefault((*key, n), []).append(measure(runtime, batches[n], args.seconds))
        for name, precision in runtimes:
            cell = {n: statistics.median(samples[(name, precision, n)]) for n in sizes}
            rows.append(
                f"| {task} | {NAMES[name]} | {precision} | {cell[1] * 1e3:.2f} | "
                + " | ".join(f"{n / cell[n]:,.0f}" for n in sizes if n > 1)
                + " |"
            )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        "| model | runtime | precision | one image, median ms | "
        + " | ".join(f"img/s at batch {n}" for n in sizes if n > 1)
        + " |"
    )
    print("|---|---|---|---|" + "---|" * (len(sizes) - 1))
    print("\n".join(rows))
    print(f"\npeak resident memory of this process: {rss:,.0f} MB")


if __name__ == "__main__":
    main()
