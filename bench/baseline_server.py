"""The naive baseline: the blog-post way to serve a Keras model, for comparison only.

One FastAPI route per request: decode the upload, `model.predict()` on a batch of one, return
the probabilities. Same models, same preprocessing (`modelcard.image_to_array`), same route
shape as the service, so the benchmark can point the same load at both. What it lacks on
purpose: a compiled call, batching, and anything off the request path.

    MODEL_DIR=models python bench/baseline_server.py --port 8001 --models digits
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from contextlib import asynccontextmanager
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import keras  # noqa: E402
import numpy as np  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, File, UploadFile  # noqa: E402
from PIL import Image  # noqa: E402

from modelcard import CARD_FILE, MODEL_FILE, ModelCard, image_to_array, list_versions  # noqa: E402


def create_baseline_app(model_dir: Path, names: list[str]) -> FastAPI:
    loaded: dict[str, tuple[keras.Model, ModelCard]] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for name in names:
            folder = model_dir / name / str(max(list_versions(model_dir, name)))
            card = ModelCard.model_validate_json((folder / CARD_FILE).read_text())
            loaded[name] = (keras.saving.load_model(folder / MODEL_FILE, compile=False), card)
        yield

    app = FastAPI(title="naive baseline", lifespan=lifespan)

    @app.get("/health/ready")
    def ready() -> dict:
        """Ready once the lifespan has loaded the models."""
        return {"status": "ready", "models": sorted(loaded)}

    @app.post("/models/{name}/predict")
    def predict(name: str, file: UploadFile = File(...)) -> dict:  # noqa: B008
        """model.predict on one image per request."""
        model, card = loaded[name]
        image = Image.open(io.BytesIO(file.file.read()))
        x = image_to_array(image, card.input)[None].astype(np.float32)
        probabilities = model.predict(x, verbose=0)[0]
        best = int(np.argmax(probabilities))
        return {
            "model": name,
            "label": card.class_names[best],
            "confidence": float(probabilities[best]),
            "probabilities": dict(zip(card.class_names, probabilities.tolist(), strict=True)),
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--model-dir", type=Path, default=Path(os.environ.get("MODEL_DIR", "models")))
    parser.add_argument("--models", nargs="+", default=["digits"])
    args = parser.parse_args()
    app = create_baseline_app(args.model_dir, args.models)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
