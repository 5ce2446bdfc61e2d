"""Helpers for the reliability tests: more tiny models, a real `python -m service` on 127.0.0.1,
its resident memory, and the check that no response leaks a traceback or a path.

The tiny models and their cards come from the service tests (`tests/service/conftest.py`);
added here: `slow` (tens of milliseconds per image, for queue overflow and draining on
SIGTERM) and any hand-built model written with a correct card (`write_model`).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest

from modelcard import CARD_FILE, MODEL_FILE, InputSpec, file_sha256
from tests.service.conftest import GREY_SPEC, ModelFactory, make_card

REPO = Path(__file__).resolve().parents[2]
SHIPPED_DIGITS = REPO / "models" / "digits" / "1"


def build_slow_model() -> keras.Model:
    """8x8 grey in, dark/bright out, with ~5 GMAC of convolutions per image in between.

    Safe-mode models cannot sleep, so slowness is real work: upsampled to 512x512 and
    convolved twice. About 0.1 s per image with one TF thread: long enough for
    requests to pile up in the queue, or to be in flight when SIGTERM arrives.
    """
    rng = np.random.default_rng(3)
    image = keras.Input(shape=GREY_SPEC.shape, name="image", dtype="float32")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(image)
    x = keras.layers.UpSampling2D(64, name="upsample")(x)
    x = keras.layers.Conv2D(48, 3, activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(48, 3, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(2, activation="softmax", name="probabilities")(x)
    model = keras.Model(image, out, name="slow")
    model.get_layer("conv2").set_weights(
        [rng.normal(0, 0.1, (3, 3, 48, 48)).astype(np.float32), np.zeros(48, np.float32)]
    )
    return model


class ReliabilityModels(ModelFactory):
    builders = {**ModelFactory.builders, "slow": (build_slow_model, GREY_SPEC, ["dark", "bright"])}


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> ReliabilityModels:
    return ReliabilityModels(tmp_path_factory.mktemp("saved-models"))


def write_model(root: Path, name: str, version: int, model: keras.Model, spec: InputSpec, classes: list[str]) -> Path:
    """Save any model as `<root>/<name>/<version>` with a card whose sha256 matches its file."""
    tmp = root / name / f".tmp-{version}"
    tmp.mkdir(parents=True)
    model.save(tmp / MODEL_FILE)
    card = make_card(name, version, spec, classes, model.count_params(), file_sha256(tmp / MODEL_FILE))
    (tmp / CARD_FILE).write_text(card.model_dump_json(indent=2))
    final = root / name / str(version)
    tmp.rename(final)
    return final


def copy_shipped_digits(root: Path) -> Path:
    """The shipped digits version copied into `root` (the test owns its store); skips without it."""
    if not (SHIPPED_DIGITS / MODEL_FILE).is_file() or not (SHIPPED_DIGITS / CARD_FILE).is_file():
        pytest.skip(f"the shipped digits model is missing ({SHIPPED_DIGITS.relative_to(REPO)}): train it first")
    target = root / "digits" / "1"
    shutil.copytree(SHIPPED_DIGITS, target)
    return target


# ---------------------------------------------------------------------------------- leaks


def assert_no_leak(body: str | bytes, *paths: Path) -> None:
    """No traceback, no site-packages path, no temp dir, the repo or `paths` (as given or resolved) in a body."""
    text = body.decode("latin-1") if isinstance(body, bytes) else body  # PNG, npz: any bytes
    assert "Traceback" not in text, text[:2000]
    assert "site-packages" not in text, text[:2000]
    assert 'File "' not in text, text[:2000]
    for path in (*paths, REPO, Path(tempfile.gettempdir())):
        for form in {str(path), str(Path(path).resolve())}:
            assert form not in text, f"{form} leaked: {text[:2000]}"


# ---------------------------------------------------------------------------------- a real server
