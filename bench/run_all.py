"""Every benchmark in one run: prints one report and rewrites the Results section of bench/README.md.

    python bench/run_all.py                          # the shipped store in models/, 10 s per load run
    python bench/run_all.py --duration 20            # steadier numbers
    python bench/run_all.py --quick --no-readme      # a smoke run: short runs, README left alone

Steps, one after the other so that no two share the CPU (each server is its own process; the
load generator runs here):

1. the service (`python -m service`) on the whole store: cold start to ready, then for each
   model single-image `/predict` over loopback at 1, 8 and 32 concurrent clients (and 16 for
   fruits, issue 4's figure), then its resident memory (now and peak) and a clean SIGTERM;
2. the naive baseline (`baseline_server.py`, `model.predict` per request) on the same store,
   same images, same concurrencies;
3. the in-process limit of each model: the service's own compiled call on full batches, no HTTP
   (`run_bench.in_process_throughput`);
4. activations per format (`bench_activations.py`, when present) for each model;
5. batch scoring through the CLI (`bench_scoring.py`) with digits.

Ratios compare two figures from this same run. Raw numbers go to bench/results/<time>-all.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import run_bench  # noqa: E402
from loadgen import install_uvloop  # noqa: E402

from modelcard import CARD_FILE, ModelCard, list_versions  # noqa: E402

CONCURRENCIES = (1, 8, 32)
README = HERE / "README.md"
RESULTS_HEADING = "## Results"
SUBPROCESS_TIMEOUT = 1800


# ---------------------------------------------------------------------------------- the machine


def machine() -> dict:
    """CPU model, cores, RAM, Python, TensorFlow and Keras versions (read without importing TF)."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "ram_gb": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "tensorflow": _version("tensorflow-cpu", "tensorflow"),
        "keras": _version("keras"),
        "platform": platform.platform(),
        "load_average": round(os.getloadavg()[0], 2),  # others using the CPU make every figure worse
    }


def _version(*distributions: str) -> str:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


# ---------------------------------------------------------------------------------- inputs


def store_models(models: Path) -> dict[str, ModelCard]:
    """The newest version's card of every model in the store."""
    cards = {}
    for folder in sorted(p for p in models.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        versions = list_versions(models, folder.name)
        if versions:
            cards[folder.name] = ModelCard.model_validate_json((folder / str(versions[-1]) / CARD_FILE).read_text())
    return cards


def drawn_image(card: ModelCard) -> tuple[bytes, str]:
    """A picture at the model's input size: the digits and fruits ones of run_bench, else a disc."""
    if card.name == "digits":
        return run_bench.digit_png(), "digit.png"
    if card.name == "fruits":
        return run_bench.fruit_jpeg(), "fruit.jpg"
    spec = card.input
    image = Image.new("RGB", (spec.width, spec.height), (240, 240, 230))
    ImageDraw.Draw(image).ellipse(
        (spec.width // 5, spec.height // 5, spec.width * 4 // 5, spec.height * 4 // 5), "teal"
    )
    buffer = io.BytesIO()
    image.convert("L" if spec.color_mode == "grayscale" else "RGB").save(buffer, "PNG")
    return buffer.getvalue(), "image.png"


# ---------------------------------------------------------------------------------- steps


def sweep(url: str, cards: dict[str, ModelCard], images: dict, duration: float, extra: dict[str, tuple]) -> dict:
    """Single-image /predict per model at each concurrency; `extra` adds concurrencies per model."""
    results: dict = {}
    for name in cards:
        image, filename = images[name]
        route = f"{url}/models/{name}/predict"
        results[name] = {}
        for concurrency in sorted({*CONCURRENCIES, *extra.get(name, ())}):
            summary = run_bench.load(route, image, filename, concurrency, duration)
            results[name][concurrency] = summary
            print(f"  {name} c={concurrency}: {summary['throughput_rps']} req/s, p50 {summary['p50_ms']} ms, "
                  f"errors {summary['errors']}", flush=True)  # fmt: skip
    return results


def run_service(models: Path, cards: dict, images: dict, duration: float, env: dict, logs: Path) -> dict:
    port = run_bench.free_port()
    url = f"http://127.0.0.1:{port}"
    spawned = time.monotonic()
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    process = run_bench.start(command, env, logs / "service.log")
    report: dict = {}
    try:
        run_bench.wait_ready(url, process, timeout=300)
        report["cold_start_seconds"] = round(time.monotonic() - spawned, 2)
        report["rss_at_ready_bytes"] = run_bench.rss_bytes(process.pid)[0]
        print(f"service: cold start to ready {report['cold_start_seconds']} s", flush=True)
        report["load"] = sweep(url, cards, images, duration, {"fruits": (16,)})
        report["rss_after_load_bytes"], report["rss_peak_bytes"] = run_bench.rss_bytes(process.pid)
    finally:
        report["exit_code"] = run_bench.stop(process)
    return report


def run_baseline(models: Path, cards: dict, images: dict, duration: float, env: dict, logs: Path) -> dict:
    port = run_bench.free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, str(HERE / "baseline_server.py"), "--port", str(port), "--model-dir", str(models)]
    process = run_bench.start([*command, "--models", *cards], env, logs / "baseline.log")
    try:
        run_bench.wait_ready(url, process, timeout=300)
        print("baseline (model.predict per request):", flush=True)
        return {"load": sweep(url, cards, images, duration, {})}
    finally:
        run_bench.stop(process)


def run_in_process(models: Path, cards: dict, duration: float) -> dict:
    results = {}
    for name in cards:
        results[name] = run_bench.in_process_throughput(models, name, duration)
        print(f"  {name} in-process: {results[name]['best']:.0f} images/s", flush=True)
    return results


def run_activations(models: Path, cards: dict, repeat: int, out: Path) -> dict:
    script = HERE / "bench_activations.py"
    if not script.exists():
        print("activations: bench/bench_activations.py not present, skipped", flush=True)
        return {}
    results = {}
    for name, card in cards.items():
        target = out / f"activations-{name}.json"
        command = [sys.executable, str(script), str(models / name / str(card.version)), "--repeat", str(repeat)]
        done = subprocess.run(
            [*command, "--out", str(target)], cwd=REPO, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT
        )
        if done.returncode != 0 or not target.exists():
            results[name] = {"error": (done.stderr or done.stdout).strip().splitlines()[-1:] or ["failed"]}
            print(f"  {name} activations failed: {results[name]['error']}", flush=True)
            continue
        results[name] = json.loads(target.read_text())
        print(f"  {name} activations: {len(results[name]['results'])} rows", flush=True)
    return results


def run_scoring(models: Path, count: int, repeat: int) -> dict:
    command = [sys.executable, str(HERE / "bench_scoring.py"), "--model-dir", str(models)]
    command += ["--count", str(count), "--repeat", str(repeat)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip()[-500:]}
    text = done.stdout
    rate = re.search(r"images/s: best (\d+), median (\d+)", text)
    scored = re.search(r"scored (\d+) images \((\d+) errors\)", text)
    accuracy = re.search(r"accuracy on these images.*?: ([0-9.]+)", text)
    source = re.search(r"wrote \d+ PNGs from (.+?) in ", text)
    return {
        "images": int(scored.group(1)) if scored else None,
        "errors": int(scored.group(2)) if scored else None,
        "best_images_per_second": int(rate.group(1)) if rate else None,
        "median_images_per_second": int(rate.group(2)) if rate else None,
        "accuracy": float(accuracy.group(1)) if accuracy else None,
        "source": source.group(1) if source else None,
        "stdout": text[-2000:],
    }


# ---------------------------------------------------------------------------------- the report


def issue4_figures(report: dict) -> dict:
    """Issue 4's targets, computed by run_bench from the same runs."""
    service, baseline = report["service"]["load"], report.get("baseline", {}).get("load", {})
    shaped = {"cold_start_seconds": report["service"]["cold_start_seconds"]}
    shaped["rss_peak_bytes"] = report["service"].get("rss_peak_bytes")
    if "digits" in service:
        shaped["digits_c1"], shaped["digits_c32"] = service["digits"][1], service["digits"][32]
        if "digits" in baseline:
            shaped["baseline_digits_c1"] = baseline["digits"][1]
    if "fruits" in service and "fruits" in report.get("in_process", {}):
        shaped["fruits_c16"] = service["fruits"][16]
        shaped["fruits_in_process"] = report["in_process"]["fruits"]
    return run_bench.figures(shaped)


def _ms(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def _ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}" if a and b else "-"


def render(report: dict) -> str:
    m = report["machine"]
    service = report["service"]
    lines = [
        RESULTS_HEADING,
        "",
        f"Written by `python bench/run_all.py{report['arguments']}` on {report['when']}.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM; Python {m['python']}, "
        f"TensorFlow {m['tensorflow']}, Keras {m['keras']}; load average {m['load_average']} at the start. "
        f"Store: {', '.join(report['models'])}.",
    ]
    if report.get("note"):
        lines += ["", report["note"]]
    lines += [
        "",
        "### Prediction: one image per request, loopback, requests/s and p50 latency",
        "",
        "`vs limit`: requests/s at c=32 over the in-process images/s of the same model (full batches,"
        " no HTTP); `vs baseline`: the service's figure over the naive `model.predict` server's, same"
        " load (p50 speed-up at c=1, throughput at c=32).",
        "",
        "| model | c=1 req/s | c=1 p50 ms | c=8 req/s | c=32 req/s | c=32 p50 ms | in-process img/s | c=32 vs limit "
        "| baseline c=1 p50 ms | baseline c=32 req/s | p50 vs baseline | c=32 vs baseline |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    baseline = report.get("baseline", {}).get("load", {})
    for name, runs in service["load"].items():
        limit = report.get("in_process", {}).get(name, {}).get("best")
        base = baseline.get(name, {})
        c1, c8, c32 = runs[1], runs[8], runs[32]
        b1, b32 = base.get(1, {}), base.get(32, {})
        cells = [
            name,
            c1["throughput_rps"],
            _ms(c1["p50_ms"]),
            c8["throughput_rps"],
            c32["throughput_rps"],
            _ms(c32["p50_ms"]),
            round(limit) if limit else "-",
            _ratio(c32["throughput_rps"], limit),
            _ms(b1.get("p50_ms")),
            b32.get("throughput_rps", "-"),
            _ratio(b1.get("p50_ms"), c1["p50_ms"], 1) + "x",
            _ratio(c32["throughput_rps"], b32.get("throughput_rps"), 1) + "x",
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    errors = sum(r["errors"] for runs in service["load"].values() for r in runs.values())
    extra = [f"{n} c=16: {runs[16]['throughput_rps']} req/s" for n, runs in service["load"].items() if 16 in runs]
    lines += [
        "",
        f"Failed requests in the service runs: {errors}." + (f" {'; '.join(extra)}." if extra else ""),
        "",
        f"Cold start to ready ({len(report['models'])} models): {service['cold_start_seconds']} s. Resident memory: "
        f"{service['rss_at_ready_bytes'] / 1e9:.2f} GB at ready, {service['rss_after_load_bytes'] / 1e9:.2f} GB after "
        f"the runs, {service['rss_peak_bytes'] / 1e9:.2f} GB peak. SIGTERM exit code: {service['exit_code']}.",
        "",
        "### Issue 4's targets",
        "",
        run_bench.table(report["issue4"]),
    ]
    activations = report.get("activations", {})
    if activations:
        lines += [
            "",
            "### Activations, every layer of one image, per format (in-process, median ms)",
            "",
            "| model | request | bytes | median ms |",
            "|---|---|---|---|",
        ]
        for name, result in activations.items():
            if "results" not in result:
                lines.append(f"| {name} | failed: {result.get('error')} | | |")
                continue
            for row, figures in result["results"].items():
                if figures["status"] != 200:
                    lines.append(f"| {name} | {row} | {figures['status']}: {figures['error']} | |")
                else:
                    lines.append(f"| {name} | {row} | {figures['bytes']:,} | {figures['median_ms']:.1f} |")
    scoring = report.get("scoring")
    if scoring:
        lines += ["", "### Batch scoring (`python -m service.client score`, digits PNGs, CLI wall time)", ""]
        if "error" in scoring:
            lines.append(f"Failed: {scoring['error'][-300:]}")
        else:
            lines.append(
                f"{scoring['images']} images ({scoring['errors']} errors) from {scoring['source']}: "
                f"best {scoring['best_images_per_second']} images/s, median {scoring['median_images_per_second']} "
                f"(goal >= 1,000)."
            )
    return "\n".join(lines) + "\n"


def rewrite_readme(section: str) -> None:
    """Replace the Results section of bench/README.md (up to the next `## ` heading or the end)."""
    text = README.read_text()
    start = text.find(RESULTS_HEADING + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        following = text.find("\n## ", start + len(RESULTS_HEADING))
        tail = text[following + 1 :] if following >= 0 else ""
        text = text[:start] + section + ("\n" + tail if tail else "")
    README.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--activations-repeat", type=int, default=20)
    parser.add_argument("--scoring-count", type=int, default=5000)
    parser.add_argument("--scoring-repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 s runs, fewer repeats: to try the script")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave bench/README.md alone")
    parser.add_argument("--note", default="", help="a sentence to add under the machine line")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.activations_repeat, args.scoring_count, args.scoring_repeat = 2.0, 3, 500, 1
    install_uvloop()
    models = args.models.resolve()
    cards = store_models(models)
    if not cards:
        sys.exit(f"no models in {models}")
    images = {name: drawn_image(card) for name, card in cards.items()}
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MODEL_DIR": str(models), "TF_CPP_MIN_LOG_LEVEL": "2", "RELOAD_INTERVAL_SECONDS": "0"}
    shown_args = " ".join(sys.argv[1:])
    report: dict = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "arguments": f" {shown_args}" if shown_args else "",
        "machine": machine(),
        "models": list(cards),
        "note": args.note,
        "env": {k: v for k, v in os.environ.items() if k.startswith(("TF_", "MAX_", "PAD_", "BATCH_", "INFERENCE_"))},
    }
    started = time.monotonic()
    report["service"] = run_service(models, cards, images, args.duration, env, logs)
    report["baseline"] = run_baseline(models, cards, images, args.duration, env, logs)
    print("in-process limit (compiled call, full batches):", flush=True)
    report["in_process"] = run_in_process(models, cards, args.duration)
    print("activations:", flush=True)
    report["activations"] = run_activations(models, cards, args.activations_repeat, args.out)
    if "digits" in cards:
        print("scoring CLI:", flush=True)
        report["scoring"] = run_scoring(models, args.scoring_count, args.scoring_repeat)
    report["issue4"] = issue4_figures(report)
    report["seconds"] = round(time.monotonic() - started, 1)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"{stamp}-all.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    section = render(report)
    print("\n" + section)
    if not args.no_readme:
        rewrite_readme(section)
        print(f"bench/README.md results rewritten; raw numbers in {args.out / (stamp + '-all.json')}")


if __name__ == "__main__":
    main()
