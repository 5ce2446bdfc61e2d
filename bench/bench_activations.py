"""Issue 5's benchmark: all-layer activations of one image in each format, bytes and milliseconds.

    python bench/bench_activations.py models/fruits/1
    python bench/bench_activations.py models/digits/1 --image seven.png --repeat 50
    python bench/bench_activations.py models/fruits/1 --out bench/results/activations.json

In-process: the real app (`create_app`, lifespan and all) is driven through Starlette's
`TestClient`, so every figure includes routing, parameter checks, the model call on the
inference executor and the encoding, but no sockets. The version directory given is served
alone (symlinked into a temporary store). One `/predict` gives the id; each row then times
`GET /activations/{id}` (recomputed from the cached input every time) after one warm-up call.
Rows after the first four are extras: one layer only (the pruned probe), kernels, Grad-CAM.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import numpy as np  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from modelcard import CARD_FILE, ModelCard  # noqa: E402
from service.config import Settings  # noqa: E402
from service.main import create_app  # noqa: E402


def drawn_image(card: ModelCard) -> bytes:
    """A smooth test picture at the model's input size (any image works: this is about speed)."""
    spec = card.input
    y, x = np.mgrid[0 : spec.height, 0 : spec.width]
    base = np.stack([x / spec.width, y / spec.height, (x + y) / (spec.width + spec.height)], -1) * 200
    image = Image.fromarray(base.astype(np.uint8), "RGB")
    ImageDraw.Draw(image).ellipse((spec.width // 4, spec.height // 4, spec.width * 3 // 4, spec.height * 3 // 4), "red")
    buffer = io.BytesIO()
    image.convert("L" if spec.color_mode == "grayscale" else "RGB").save(buffer, "PNG")
    return buffer.getvalue()


def timed(client: TestClient, url: str, repeat: int) -> dict:
    first = client.get(url)  # warm-up: traces a layer set's function on its first use
    times, response = [], first
    for _ in range(repeat if first.status_code == 200 else 0):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return {
        "status": first.status_code,
        "bytes": len(response.content),
        "median_ms": statistics.median(times) if times else None,
        "min_ms": min(times) if times else None,
        "error": None if first.status_code == 200 else first.json()["error"]["message"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version_dir", type=Path, help="a model version directory, e.g. models/fruits/1")
    parser.add_argument("--image", type=Path, help="an image file (default: a drawn picture)")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per row (median reported)")
    parser.add_argument("--layer", help="layer for the png row (default: the first Conv2D)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    source = args.version_dir.resolve()
    card = ModelCard.model_validate_json((source / CARD_FILE).read_bytes())
    image = args.image.read_bytes() if args.image else drawn_image(card)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        (store / card.name).mkdir()
        (store / card.name / str(card.version)).symlink_to(source, target_is_directory=True)
        settings = Settings(model_dir=store, reload_interval_seconds=0, _env_file=None)
        started = time.perf_counter()
        with TestClient(create_app(settings)) as client:
            while client.get("/health/ready").status_code != 200:
                time.sleep(0.05)
            ready_seconds = time.perf_counter() - started
            entry = client.app.state.registry.resolve(card.name)
            layers = client.get(f"/models/{card.name}").json()["layers"]
            convs = [layer["name"] for layer in layers if layer["type"] == "Conv2D"]
            png_layer = args.layer or (convs[0] if convs else layers[1]["name"])
            prediction = client.post(f"/models/{card.name}/predict", files={"file": ("image.png", image)})
            assert prediction.status_code == 200, prediction.text
            pid = prediction.json()["predictions"][0]["id"]
            rows = {
                "json base64, all layers": f"/activations/{pid}",
                "json list, all layers": f"/activations/{pid}?encoding=list",
                "npz, all layers": f"/activations/{pid}?format=npz",
                f"png, {png_layer}": f"/activations/{pid}?format=png&layer={png_layer}",
            }
            if convs:
                rows[f"npz, {convs[0]} only"] = f"/activations/{pid}?format=npz&layers={convs[0]}"
                rows[f"kernels png, {convs[0]}"] = f"/models/{card.name}/layers/{convs[0]}/kernels"
                rows["gradcam png, last conv"] = f"/activations/{pid}/gradcam"
                rows["gradcam json, last conv"] = f"/activations/{pid}/gradcam?format=json"
            results = {name: timed(client, url, args.repeat) for name, url in rows.items()}

    print(f"{card.name} v{card.version}: {len(layers)} layers, input {list(card.input.shape)}")
    print(f"load + warm (probe included): {entry.load_seconds:.2f} s; ready after {ready_seconds:.2f} s")
    print(f"in-process (TestClient), median of {args.repeat} after one warm-up\n")
    print(f"{'request':<32} {'bytes':>12} {'median ms':>10} {'min ms':>8}")
    for name, result in results.items():
        if result["status"] != 200:
            print(f"{name:<32} {result['status']:>12} {result['error']}")
            continue
        print(f"{name:<32} {result['bytes']:>12,} {result['median_ms']:>10.1f} {result['min_ms']:>8.1f}")
    if args.out:
        report = {
            "model": card.name,
            "version": card.version,
            "layers": len(layers),
            "load_seconds": entry.load_seconds,
            "repeat": args.repeat,
            "transport": "in-process, fastapi.testclient.TestClient",
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
