"""The shipped model store: every version loads through the service, its card matches its
file, and it classifies the sample images committed under tests/data/ (taken from each
model's validation split) with the expected labels. The one test that needs the weights."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from modelcard import CARD_FILE, MODEL_FILE, ModelCard, file_sha256, list_versions, load_verified_model
from service.config import Settings
from service.main import create_app

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SAMPLES = ROOT / "tests" / "data"
TASKS = ["digits", "fruits", "signs", "catsdogs"]


def _latest(task: str) -> Path:
    versions = list_versions(MODELS, task)
    assert versions, f"no shipped version of {task} in {MODELS}"
    return MODELS / task / str(versions[-1])


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # `auto` with an empty decision cache of its own: a first start, as on a fresh machine
    cache = tmp_path_factory.mktemp("runtime-cache")
    app = create_app(Settings(model_dir=MODELS, reload_interval_seconds=0, runtime_cache_dir=cache))
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/health/ready").json()
            time.sleep(0.2)
        yield client


@pytest.mark.parametrize("task", TASKS)
def test_card_matches_the_file_and_the_loaded_model(client, task):
    folder = _latest(task)
    card = ModelCard.model_validate_json((folder / CARD_FILE).read_text())
    assert card.sha256 == file_sha256(folder / MODEL_FILE)
    assert card.name == task and card.version == int(folder.name)
    described = client.get(f"/models/{task}").json()
    layers = described["layers"]
    assert layers[0]["name"] == "image"
    assert layers[0]["output_shape"][1:] == list(card.input.shape)
    assert layers[-1]["output_shape"][1:] == [len(card.class_names)]
    assert card.validation.accuracy > 0.8
    assert card.reference is not None and card.reference.architecture == "seed"


@pytest.mark.parametrize("task", TASKS)
def test_sample_images_get_their_labels(client, task):
    samples = sorted((SAMPLES / task).iterdir())
    assert len(samples) >= 3
    files = [("file", (p.name, p.read_bytes())) for p in samples]
    response = client.post(f"/models/{task}/predict", files=files)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = [p.name.split("__")[0] for p in samples]
    assert [p["label"] for p in predictions] == expected


# ---------------------------------------------------------------- runtimes (service/runtimes.py)


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("task", TASKS)
def test_each_runtime_reproduces_keras_on_the_shipped_exports(task, runtime):
    from modelcard.parity import gate_inputs
    from service.inference import Classifier
    from service.runtimes import build_runtime

    folder = _latest(task)
    card = ModelCard.model_validate_json((folder / CARD_FILE).read_text())
    assert set(card.exports) == {"onnx", "openvino"}, "run: python -m training export " + str(folder)
    for record in card.exports.values():
        for filename, digest in record.files.items():
            assert file_sha256(folder / filename) == digest
    settings = Settings(model_dir=MODELS, max_batch_size=16, _env_file=None)
    keras_call = Classifier(load_verified_model(folder / MODEL_FILE, card.sha256), card.input, card.num_classes, 16)
    inputs, described = gate_inputs(card, folder)
    assert card.parity_inputs is not None and f"{card.parity_inputs.count} real images" in described
    expected = keras_call(inputs)
    got = build_runtime(runtime, "f32", folder, settings, card)(inputs)
    assert np.abs(got - expected).max() <= 1e-4
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


@pytest.fixture(scope="module")
def newest_store(tmp_path_factory) -> Path:
    """The shipped store with only each model's newest version (linked, not copied)."""
    root = tmp_path_factory.mktemp("newest") / "models"
    for task in TASKS:
        folder = _latest(task)
        (root / task).mkdir(parents=True)
        (root / task / folder.name).symlink_to(folder, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def forced_client(newest_store: Path):
    """One app per forced runtime over the newest versions, started on first use and stopped with the module."""
    stack = contextlib.ExitStack()
    clients: dict[str, TestClient] = {}

    def get(runtime: str) -> TestClient:
        if runtime not in clients:
            # batches of at most 8 (4 samples a model): fewer batch sizes to compile and warm at load
            settings = Settings(
                model_dir=newest_store, reload_interval_seconds=0, inference_runtime=runtime, max_batch_size=8
            )
            app = create_app(settings)
            client = clients[runtime] = stack.enter_context(TestClient(app))
            deadline = time.monotonic() + 120
            while client.get("/health/ready").status_code != 200:
                assert time.monotonic() < deadline, client.get("/health/ready").json()
                time.sleep(0.2)
        return clients[runtime]

    with stack:
        yield get


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime", "tensorflow"])
@pytest.mark.parametrize("task", TASKS)
def test_predicted_probabilities_equal_the_last_layer_of_the_activations(forced_client, task, runtime):
    client = forced_client(runtime)
    described = client.get(f"/models/{task}").json()
    assert described["runtime"]["in_use"] == runtime, described["runtime"]
    last = described["layers"][-1]["name"]
    samples = sorted((SAMPLES / task).iterdir())
    files = [("file", (p.name, p.read_bytes())) for p in samples]
    predictions = client.post(f"/models/{task}/predict", files=files).json()["predictions"]
    classes = list(predictions[0]["probabilities"])
    for prediction in predictions:
        response = client.get(f"/activations/{prediction['id']}?layers={last}&encoding=list")
        assert response.status_code == 200, response.text
        (layer,) = response.json()["layers"]
        activation = np.asarray(layer["data"], np.float32).reshape(-1)
        predicted = np.array([prediction["probabilities"][c] for c in classes], np.float32)
        assert np.abs(predicted - activation).max() <= 1e-4


# Fonts Debian's fonts-dejavu-core ships (.ci/run installs it), plus Pillow's bundled font.
DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
DEJAVU_CORE = [
    "DejaVuSans",
    "DejaVuSans-Bold",
    "DejaVuSansMono",
    "DejaVuSansMono-Bold",
    "DejaVuSerif",
    "DejaVuSerif-Bold",
]


def test_digits_read_font_digits_sent_as_photos_are(client):
    """Dark ink on light paper, other sizes, off-centre: the card's MNIST framing makes them readable."""
    import io

    from PIL import ImageFont

    from training.rendered_digits import render_digits

    card = ModelCard.model_validate_json((_latest("digits") / CARD_FILE).read_text())
    assert card.input.preprocess == "mnist"
    files = [DEJAVU / f"{name}.ttf" for name in DEJAVU_CORE]
    if not all(f.is_file() for f in files):
        pytest.skip(f"Debian's fonts-dejavu-core is not installed (no {DEJAVU}/DejaVuSans.ttf): apt-get install it")
    fonts = [ImageFont.truetype(str(f), 96) for f in files] + [ImageFont.load_default(size=96)]
    images, labels = render_digits(fonts, angles=(-10, 0, 10))
    predicted = []
    for start in range(0, len(images), 32):
        parts = []
        for i, image in enumerate(images[start : start + 32]):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            parts.append(("file", (f"{start + i}.png", buffer.getvalue(), "image/png")))
        response = client.post("/models/digits/predict", files=parts)
        assert response.status_code == 200, response.text
        predicted += [int(p["label"]) for p in response.json()["predictions"]]
    accuracy = float(np.mean(np.array(predicted) == labels))
    assert len(images) == 210 and accuracy >= 0.98, accuracy
