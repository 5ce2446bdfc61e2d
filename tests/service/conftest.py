"""Tiny models with hand-set weights, written into a temporary model store, and app helpers.

Two models whose answers are known without training:
- `grey`: 8x8 grayscale, Conv2D `conv1` (a 3x3 mean filter) -> Flatten -> Dense `probabilities`,
  classes dark/bright: "bright" when the mean pixel is above 127.5;
- `colors`: 8x8 RGB, global average -> Dense `probabilities`, classes red/green/blue: the
  strongest channel wins;
and `edges` (8x8 RGB, two convolutions with seeded asymmetric weights) for the activations API.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modelcard import CARD_FILE, MODEL_FILE, InputSpec, ModelCard, file_sha256
from service.config import Settings

GREY_SPEC = InputSpec(height=8, width=8, channels=1, color_mode="grayscale")
RGB_SPEC = InputSpec(height=8, width=8, channels=3, color_mode="rgb")


def build_grey_model(threshold: float = 0.5) -> keras.Model:
    image = keras.Input(shape=GREY_SPEC.shape, name="image", dtype="float32")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(image)
    x = keras.layers.Conv2D(1, 3, activation="relu", name="conv1")(x)  # 6x6 means of the input
    x = keras.layers.Flatten(name="flatten")(x)
    out = keras.layers.Dense(2, activation="softmax", name="probabilities")(x)
    model = keras.Model(image, out, name="grey")
    model.get_layer("conv1").set_weights([np.full((3, 3, 1, 1), 1 / 9, np.float32), np.zeros(1, np.float32)])
    # logits: dark = 36 * threshold, bright = sum of the 36 means; x4 sharpens the softmax
    kernel = np.zeros((36, 2), np.float32)
    kernel[:, 1] = 4.0
    model.get_layer("probabilities").set_weights([kernel, np.array([4.0 * 36 * threshold, 0.0], np.float32)])
    return model


def build_colors_model() -> keras.Model:
    image = keras.Input(shape=RGB_SPEC.shape, name="image", dtype="float32")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(image)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(3, activation="softmax", name="probabilities")(x)
    model = keras.Model(image, out, name="colors")
    model.get_layer("probabilities").set_weights([np.eye(3, dtype=np.float32) * 10.0, np.zeros(3, np.float32)])
    return model


def build_edges_model() -> keras.Model:
    """8x8 RGB: two convolutions with fixed, asymmetric (seeded) weights, a ReLU layer, global average.

    Made for the activations tests: `conv1`'s kernels are not symmetric, so cross-correlation and
    true convolution differ; `conv2` has no activation of its own and feeds a separate `relu2`.
    """
    rng = np.random.default_rng(5)
    image = keras.Input(shape=RGB_SPEC.shape, name="image", dtype="float32")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(image)
    x = keras.layers.Conv2D(2, 3, activation="relu", name="conv1")(x)  # 6x6x2
    x = keras.layers.Conv2D(3, 3, padding="same", name="conv2")(x)  # 6x6x3
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(2, activation="softmax", name="probabilities")(x)
    model = keras.Model(image, out, name="edges")
    model.get_layer("conv1").set_weights(
        [rng.uniform(-1, 1, (3, 3, 3, 2)).astype(np.float32), np.array([0.3, 0.1], np.float32)]
    )
    model.get_layer("conv2").set_weights(
        [rng.uniform(-1, 1, (3, 3, 2, 3)).astype(np.float32), np.array([0.1, 0.0, 0.2], np.float32)]
    )
    model.get_layer("probabilities").set_weights(
        [rng.uniform(-3, 3, (3, 2)).astype(np.float32), np.zeros(2, np.float32)]
    )
    return model


def make_card(name: str, version: int, spec: InputSpec, classes: list[str], parameters: int, sha: str) -> ModelCard:
    counts = dict.fromkeys(classes, 10)
    return ModelCard(
        name=name,
        version=version,
        task=name,
        description=f"tiny {name} test model with hand-set weights",
        class_names=classes,
        input=spec,
        architecture="hand-set",
        parameters={"total": parameters, "trainable": parameters},
        data={
            "path": "none",
            "format": "synthetic",
            "train_counts": counts,
            "validation_counts": counts,
            "validation_source": "none",
        },
        training={
            "command": "tests/service/conftest.py",
            "wall_time_seconds": 0.0,
            "epochs": 0,
            "batch_size": 1,
            "seed": 0,
            "val_fraction": 0.0,
            "optimizer": "none",
            "learning_rate": 0.0,
            "tensorflow_version": "2",
            "keras_version": keras.__version__,
            "python_version": "3",
        },
        validation={
            "accuracy": 1.0,
            "loss": 0.0,
            "per_class_accuracy": dict.fromkeys(classes, 1.0),
            "confusion_matrix": [[10 if i == j else 0 for j in classes] for i in classes],
        },
        sha256=sha,
        created_at=datetime.now(UTC),
    )


def _with_nan_weights(model: keras.Model) -> keras.Model:
    layer = model.get_layer("probabilities")
    layer.set_weights([np.full_like(weights, np.nan) for weights in layer.get_weights()])
    return model


class ModelFactory:
    """Saves each tiny model once per session; writes versions of it into any store."""

    builders = {
        "grey": (build_grey_model, GREY_SPEC, ["dark", "bright"]),
        # the same model with other weights: "bright" only above 90% white (`grey` says so above 50%)
        "grey-strict": (lambda: build_grey_model(threshold=0.9), GREY_SPEC, ["dark", "bright"]),
        # a broken model: every probability NaN
        "grey-nan": (lambda: _with_nan_weights(build_grey_model()), GREY_SPEC, ["dark", "bright"]),
        "colors": (build_colors_model, RGB_SPEC, ["red", "green", "blue"]),
        "edges": (build_edges_model, RGB_SPEC, ["left", "right"]),
    }

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self._parameters: dict[str, int] = {}

    def saved(self, kind: str) -> Path:
        path = self.cache / kind / MODEL_FILE
        if not path.exists():
            path.parent.mkdir(parents=True)
            model = self.builders[kind][0]()
            model.save(path)
            self._parameters[kind] = model.count_params()
        return path

    def write(self, root: Path, name: str, version: int, kind: str | None = None, sha: str | None = None) -> Path:
        """Write `kind`'s model as `<root>/<name>/<version>`, atomically like training's store does.

        `sha` overrides the card's sha256 (to test that a mismatch is refused).
        """
        kind = kind or name
        _, spec, classes = self.builders[kind]
        source = self.saved(kind)
        tmp = root / name / f".tmp-{kind}-{version}"
        tmp.mkdir(parents=True)
        shutil.copy(source, tmp / MODEL_FILE)
        card = make_card(name, version, spec, classes, self._parameters[kind], sha or file_sha256(tmp / MODEL_FILE))
        (tmp / CARD_FILE).write_text(card.model_dump_json(indent=2))
        final = root / name / str(version)
        tmp.rename(final)
        return final


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelFactory:
    return ModelFactory(tmp_path_factory.mktemp("saved-models"))


@pytest.fixture
def store(tmp_path: Path, models: ModelFactory) -> Path:
    """A model store with grey v1 and colors v1."""
    root = tmp_path / "models"
    models.write(root, "grey", 1)
    models.write(root, "colors", 1)
    return root


def settings_for(root: Path, **overrides) -> Settings:
    values = {
        "model_dir": root,
        "reload_interval_seconds": 0,
        "max_batch_size": 8,
        "max_batch_wait_us": 2000,
        "load_threads": 1,
        # one process, as TestClient runs the app: with WORKERS > 1 the lifespan waits for the models
        "workers": 1,
        # the runtime tests (test_runtimes.py) ask for others; exporting tiny models elsewhere only costs time
        "inference_runtime": "tensorflow",
        # beside the store, not the machine-wide default: decisions cached by one test never reach another
        "runtime_cache_dir": root.parent / "runtime-cache",
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)


def wait_until(check: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    """Ready, and every version loaded (ready comes once each model's newest version is)."""
    wait_until(lambda: client.get("/health/ready").status_code == 200, timeout)
    models = lambda: client.get("/models").json()["models"]  # noqa: E731
    wait_until(lambda: all(v["state"] != "loading" for m in models() for v in m["versions"]), timeout)


def png(array: np.ndarray, mode: str | None = None, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8), mode).save(buffer, fmt, **save)
    return buffer.getvalue()


def grey_image(value: int, size: tuple[int, int] = (8, 8)) -> bytes:
    return png(np.full(size[::-1], value, np.uint8))


def color_image(rgb: tuple[int, int, int], size: tuple[int, int] = (8, 8), fmt: str = "PNG") -> bytes:
    return png(np.tile(np.array(rgb, np.uint8), (*size[::-1], 1)), fmt=fmt)
