"""The CLI end to end on tiny data: train one epoch, load the version back, check the card."""

from __future__ import annotations

import io
import json
import shutil
import urllib.parse
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

from modelcard import ModelCard, file_sha256, list_versions
from modelcard.exporting import FORMATS
from modelcard.parity import NOISE_IMAGES, gate_inputs, reference_outputs
from training.__main__ import main
from training.fit import load_version

SHIPPED = Path(__file__).resolve().parents[2] / "models"

pytestmark = pytest.mark.slow


def _train(tmp_path: Path, task: str, data: Path, *extra: str) -> tuple[Path, ModelCard]:
    out = tmp_path / "models"
    # one batch holds every tiny dataset here: one shape, so the training step is traced once, not
    # again for a last partial batch (2-3 s a run)
    code = main(["train", task, "--data", str(data), "--epochs", "1", "--batch-size", "256", "--out", str(out), *extra])
    assert code == 0
    version = list_versions(out, task)[-1]
    folder = out / task / str(version)
    return folder, ModelCard.model_validate_json((folder / "model.json").read_text())


@pytest.mark.parametrize(
    ("task", "fixture", "classes", "shape", "export"),
    [
        # exports do not depend on the dataset's format: checked on a grey and a colour model
        ("digits", "mnist_npz", 10, (28, 28, 1), True),
        ("fruits", "fruits_recordings", 3, (100, 100, 3), False),
        ("signs", "signs_h5", 6, (64, 64, 3), False),
        ("catsdogs", "catsdogs_folders", 2, (128, 128, 3), True),
    ],
)
def test_train_writes_a_loadable_version_with_a_complete_card(tmp_path, request, task, fixture, classes, shape, export):
    data = request.getfixturevalue(fixture)
    folder, card = _train(tmp_path, task, data, *([] if export else ["--no-export"]))
    assert folder.name == "1" and card.version == 1 and card.name == task
    assert card.sha256 == file_sha256(folder / "model.keras")
    assert len(card.class_names) == classes and card.input.shape == shape
    assert card.architecture == "improved" and card.parameters.total > 0
    assert card.training.epochs == 1 and card.training.seed == 42 and card.training.wall_time_seconds > 0
    assert card.training.command.startswith("python -m training train " + task)
    assert card.training.tensorflow_version and card.training.keras_version
    assert sum(card.data.train_counts.values()) + sum(card.data.validation_counts.values()) > 0
    assert all(n >= 1 for n in card.data.validation_counts.values()), "stratified: every class validated"
    assert 0.0 <= card.validation.accuracy <= 1.0
    assert np.array(card.validation.confusion_matrix).sum() == sum(card.data.validation_counts.values())

    model, loaded_card = load_version(folder)
    assert loaded_card == card
    assert model.get_layer("rescale") is not None
    out = model(np.zeros((1, *shape), np.float32)).numpy()
    assert out.shape == (1, classes)
    # the file holds no optimizer state: it is the inference model only
    with zipfile.ZipFile(folder / "model.keras") as archive:
        weights = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
        assert "optimizer" not in weights, list(weights)
    # the runtime files the service prefers, written next to model.keras with their checksums
    assert set(card.exports) == (set(FORMATS) if export else set())  # the dev install has both exporters
    for record in card.exports.values():
        assert record.files and all(file_sha256(folder / f) == sha for f, sha in record.files.items())
    assert card.parity_inputs is not None and (folder / card.parity_inputs.file).is_file()
    # with exports, the model's own answers on the gate inputs: the service gates them before loading Keras
    if export:
        inputs, _ = gate_inputs(card, folder)
        assert len(inputs) == NOISE_IMAGES + card.parity_inputs.count
        np.testing.assert_allclose(reference_outputs(card, folder, inputs), model(inputs).numpy(), atol=1e-6)
    else:
        assert card.parity_reference is None
    if task == "fruits":  # validated on frames (angles) never seen in training, by default
        assert card.training.split == "frames" and "contiguous 20% of each recording" in card.data.validation_source
    if task == "digits":
        assert 0.0 <= card.extra_evaluations["rendered_digits_accuracy"] <= 1.0
        assert card.input.preprocess == "mnist"  # digits are framed the MNIST way, in serving and evaluation


def test_a_second_run_is_a_new_version_keeps_the_first_and_same_seed_gives_same_weights(tmp_path, signs_h5):
    first, first_card = _train(tmp_path, "signs", signs_h5, "--arch", "seed", "--no-export")
    assert first_card.exports == {} and not list(first.glob("model.onnx")) and not list(first.glob("model.xml"))
    sha_before = file_sha256(first / "model.keras")
    second, card = _train(tmp_path, "signs", signs_h5, "--arch", "seed", "--reference", str(first), "--no-export")
    assert (first.name, second.name) == ("1", "2")
    assert file_sha256(first / "model.keras") == sha_before
    assert card.reference is not None and card.reference.architecture == "seed"
    assert card.reference.parameters == 170_438
    gain = card.validation.accuracy - card.reference.validation_accuracy
    assert "reference post's architecture" in card.notes
    assert ("Better on validation" if gain > 0 else "Not better on validation") in card.notes
    # a reference validated on other images is refused, before any training
    for other in (["--seed", "7"], ["--val-fraction", "0.4"], ["--split", "stratified"]):
        out = tmp_path / "models"
        args = ["train", "signs", "--data", str(signs_h5), "--epochs", "1", "--out", str(out), "--no-export"]
        assert main([*args, "--reference", str(first), *other]) == 2
    assert list_versions(tmp_path / "models", "signs") == [1, 2]
    assert not [p for p in (tmp_path / "models" / "signs").iterdir() if p.name.startswith(".tmp")]
    # the same seed, data and architecture: the same weights
    wa = keras.saving.load_model(first / "model.keras").get_weights()
    wb = keras.saving.load_model(second / "model.keras").get_weights()
    for x, y in zip(wa, wb, strict=True):
        np.testing.assert_array_equal(x, y)


def test_missing_dataset_is_one_clear_line(tmp_path, capsys):
    code = main(["train", "fruits", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "nowhere" in err and "Training/<class>" in err
    assert "Traceback" not in err


def test_every_command_refuses_a_data_path_that_does_not_exist(tmp_path, mnist_npz, capsys):
    model = tmp_path / "models" / "digits" / "1"
    model.mkdir(parents=True)
    (model / "model.json").write_text((SHIPPED / "digits" / "1" / "model.json").read_text())
    wrong = str(mnist_npz / "no-such-folder")  # beside a real mnist.npz, which must not be used instead
    for args in (["evaluate", "digits", "--model", str(model)], ["check-split", "digits"]):
        assert main([*args, "--data", wrong]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "no-such-folder" in err and "Traceback" not in err


def test_a_split_that_leaves_no_validation_image_stops_before_training(tmp_path, catsdogs_folders, capsys):
    # cats and dogs are not named as Fruits-360 frames: the frames split holds nothing out
    out = tmp_path / "m"
    assert main(["train", "catsdogs", "--data", str(catsdogs_folders), "--split", "frames", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "frames split" in err and "0 for validation" in err and not out.exists()


def test_export_with_a_sample_that_is_not_an_image_is_one_clear_line(tmp_path, capsys):
    version = shutil.copytree(SHIPPED / "digits" / "1", tmp_path / "digits" / "1")
    before = {f.name: f.read_bytes() for f in version.iterdir()}
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    assert main(["export", str(version), "--samples", str(not_image), "--reference-only"]) == 2
    err = capsys.readouterr().err
    assert "notes.png: not a readable image" in err and "Traceback" not in err
    assert {f.name: f.read_bytes() for f in version.iterdir()} == before  # nothing changed, nothing left over


def test_malformed_dataset_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "signs").mkdir()
    (tmp_path / "signs" / "train_signs.h5").write_bytes(b"garbage")
    assert main(["train", "signs", "--data", str(tmp_path / "signs"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "train_signs.h5" in err and "HDF5" in err and "Traceback" not in err


def test_download_from_a_file_url_with_checksum_then_train_and_evaluate(tmp_path, mnist_npz, capsys):
    archive = mnist_npz / "mnist.npz"
    url = "file://" + urllib.parse.quote(str(archive))
    dest = tmp_path / "fetched"
    code = main(
        [
            "train",
            "digits",
            "--arch",
            "seed",
            "--data",
            str(dest),
            "--download",
            "--url",
            url,
            "--sha256",
            file_sha256(archive),
            "--epochs",
            "1",
            "--batch-size",
            "256",
            "--no-export",
            "--out",
            str(tmp_path / "m"),
        ]
    )
    assert code == 0
    assert (dest / "mnist.npz").read_bytes() == archive.read_bytes()
    capsys.readouterr()

    folder = tmp_path / "m" / "digits" / "1"
    assert main(["evaluate", "digits", "--model", str(folder), "--data", str(dest)]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["images"] == 20 and summary["part"] == "test split"
    assert summary["preprocess"] == "mnist"  # evaluated through the framing, as served
    assert "confusion matrix" in out


def test_download_with_a_wrong_checksum_is_refused(tmp_path, mnist_npz, capsys):
    url = "file://" + urllib.parse.quote(str(mnist_npz / "mnist.npz"))
    code = main(["train", "digits", "--data", str(tmp_path / "d"), "--download", "--url", url, "--sha256", "0" * 64])
    assert code == 2
    assert "sha256" in capsys.readouterr().err
    assert not list((tmp_path / "d").glob("*.npz"))


def test_download_offline_says_where_to_put_the_files(tmp_path, capsys):
    # an address nothing answers on: the same failure as a machine without internet
    code = main(
        ["train", "digits", "--data", str(tmp_path / "d"), "--download", "--url", "http://127.0.0.1:9/mnist.npz"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "could not download" in err and str(tmp_path / "d") in err and "mnist.npz" in err


def test_download_without_pinned_checksum_is_refused(tmp_path, capsys):
    assert main(["train", "catsdogs", "--data", str(tmp_path / "d"), "--download"]) == 2
    assert "no checksum is pinned" in capsys.readouterr().err


def test_the_split_can_be_chosen_and_evaluate_uses_the_cards_or_another(tmp_path, fruits_recordings, capsys):
    folder, card = _train(tmp_path, "fruits", fruits_recordings, "--split", "stratified", "--no-export")
    assert card.training.split == "stratified" and card.data.validation_source.startswith("stratified 20%")
    assert sum(card.data.validation_counts.values()) == np.array(card.validation.confusion_matrix).sum()
    capsys.readouterr()
    # the same version on its own (stratified) split, then on the stricter frames split
    assert main(["evaluate", "fruits", "--model", str(folder), "--data", str(fruits_recordings)]) == 0
    own = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert own["part"] == "stratified validation split carved as in training"
    assert own["images"] == sum(card.data.validation_counts.values())
    args = ["evaluate", "fruits", "--model", str(folder), "--data", str(fruits_recordings), "--split", "frames"]
    assert main(args) == 0
    frames = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert frames["part"] == "frames validation split"


def _smooth_photos(folder: Path, prefix: str, seeds: range) -> None:
    """Distinct images with structure (a random 6x6 pattern, enlarged), as photos have."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        pattern = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(pattern).resize((120, 90), Image.Resampling.BICUBIC).save(folder / f"{prefix}.{seed}.jpg")


def test_check_split_finds_a_copy_across_the_split(tmp_path, capsys):
    root = tmp_path / "catsdogs"
    _smooth_photos(root / "train" / "cats", "cat", range(0, 10))
    _smooth_photos(root / "train" / "dogs", "dog", range(100, 110))
    assert main(["check-split", "catsdogs", "--data", str(root)]) == 0
    assert capsys.readouterr().out.startswith("0 near-duplicate pair(s)")
    cats = root / "train" / "cats"
    # a resized, re-encoded copy of every cat: whichever side each lands on, some pair spans the split
    for file in sorted(cats.iterdir()):
        Image.open(file).resize((100, 75)).save(cats / f"cat.{50 + int(file.stem.split('.')[1])}.jpg", quality=70)
    assert main(["check-split", "catsdogs", "--data", str(root), "--split", "stratified"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert all(line.split("bits")[1].count("cats/cat.") == 2 for line in out[:-1]) and len(out) > 1
    assert out[-1].startswith(f"{len(out) - 1} near-duplicate pair(s)")
    # the task's own split keeps a copy whose hash is the original's on its side: what still spans
    # it differs by a bit or more (resized copies the split cannot tell from other photos)
    main(["check-split", "catsdogs", "--data", str(root)])
    grouped = capsys.readouterr().out.splitlines()
    assert all(int(line.split("bits")[0]) > 0 for line in grouped[:-1])
    assert any(int(line.split("bits")[0]) == 0 for line in out[:-1]), "the stratified split put a 0-bit copy across"
