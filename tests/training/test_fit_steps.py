"""training/fit.py's steps, one by one: split, compile, fit, measure, card."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pytest

from modelcard import InputSpec
from training.architectures import Architecture, Recipe
from training.datasets import Dataset, Split, stratified_split
from training.fit import (
    Options,
    build_card,
    compile_model,
    extra_evaluations,
    fit_model,
    metrics_for,
    optimizer_description,
    recalibrate_batchnorm,
    split_dataset,
)
from training.tasks import TASKS

SPEC = InputSpec(height=8, width=8, channels=1, color_mode="grayscale")


def _tiny(spec: InputSpec, num_classes: int) -> keras.Model:
    image = keras.Input(shape=spec.shape, name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(image)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(image, keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x))


def _dataset(n: int = 40, files: bool = True) -> Dataset:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    x = np.where(y[:, None, None, None] == 1, 200, 20).astype(np.uint8) + rng.integers(0, 20, (n, 8, 8, 1)).astype(
        np.uint8
    )
    names = np.array([f"{'ab'[c]}/{'r_' if i % 4 >= 2 else ''}{i}_100.jpg" for i, c in enumerate(y)])
    return Dataset(Split(x, y, names if files else None), ["a", "b"], "synthetic", Path("synthetic"))


def _arch(**recipe) -> Architecture:
    return Architecture("tiny", SPEC, _tiny, Recipe(epochs=4, batch_size=8, learning_rate=0.01, **recipe))


def test_split_dataset_by_kind():
    data = _dataset()
    train, val = split_dataset(data, 0.25, seed=1, kind="stratified")
    expected_train, expected_val = stratified_split(data.train.y, 0.25, 1)
    np.testing.assert_array_equal(val.y, data.train.y[expected_val])
    np.testing.assert_array_equal(train.files, data.train.files[expected_train])  # names travel with images
    _, val = split_dataset(data, 0.25, seed=1, kind="recording")
    assert {f.split("/")[1].startswith("r_") for f in val.files if f.startswith("a/")} in ({True}, {False})
    with pytest.raises(ValueError, match="file names"):
        split_dataset(_dataset(files=False), 0.25, seed=1, kind="recording")
    with pytest.raises(ValueError, match="unknown split"):
        split_dataset(data, 0.25, seed=1, kind="random")


def test_compile_model_warms_up_then_decays():
    arch = _arch(schedule="cosine", warmup_epochs=1, label_smoothing=0.1)
    options = Options(epochs=4, batch_size=8, learning_rate=0.01, seed=0, val_fraction=0.2)
    model = compile_model(arch, 2, options, train_size=32)  # 4 steps per epoch, 16 in all
    schedule = model.optimizer._learning_rate  # the schedule object (learning_rate is its current value)
    rates = [float(schedule(step)) for step in (0, 2, 4, 10, 16)]
    assert rates[0] == pytest.approx(0.001) and rates[1] < rates[2] == pytest.approx(0.01)
    assert rates[2] > rates[3] > rates[4] == pytest.approx(0.0001, rel=0.05)
    assert model.loss.get_config()["label_smoothing"] == 0.1
    assert optimizer_description(arch.recipe) == "adam + 1-epoch warm-up + cosine decay"
    plain = compile_model(_arch(), 2, options, train_size=32)
    assert float(plain.optimizer.learning_rate) == pytest.approx(0.01)


def test_fit_model_learns_and_keeps_augmentation_out_of_the_model():
    data = _dataset()
    train, val = split_dataset(data, 0.25, seed=0, kind="stratified")
    arch = _arch(augmentation=("brightness:0.1",))
    options = Options(epochs=4, batch_size=8, learning_rate=0.05, seed=0, val_fraction=0.25)
    keras.utils.set_random_seed(0)
    model = compile_model(arch, 2, options, len(train))
    before = [w.copy() for w in model.get_weights()]
    wall = fit_model(model, TASKS["signs"], arch, train, val, options)
    assert wall > 0
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    assert not [layer for layer in model.layers if layer.name.startswith("random") or "augment" in layer.name]
    probabilities = model.predict(val.x.astype(np.float32), verbose=0)
    assert metrics_for(probabilities, val.y, data.class_names).accuracy == 1.0


def test_metrics_list_the_most_confident_mistakes_with_their_files():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7], [0.05, 0.95]])
    labels = np.array([0, 0, 0, 1, 0])
    files = np.array(["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"])
    metrics = metrics_for(probabilities, labels, ["cat", "dog"], files)
    assert metrics.confusion_matrix == [[1, 3], [0, 1]]
    assert [(w.file, w.true, w.predicted) for w in metrics.wrong_examples] == [
        ("e.jpg", "cat", "dog"),
        ("b.jpg", "cat", "dog"),
        ("c.jpg", "cat", "dog"),
    ]
    assert metrics.wrong_examples[0].confidence == pytest.approx(0.95)
    assert metrics_for(probabilities, labels, ["cat", "dog"]).wrong_examples == []


def test_extra_evaluations_come_from_the_task():
    calls = []
    task = dataclasses.replace(TASKS["signs"], extra_evaluations={"double": lambda m, s: calls.append((m, s)) or 0.5})
    assert extra_evaluations(task, "model", SPEC, log=lambda *_: None) == {"double": 0.5}
    assert calls == [("model", SPEC)]
    assert set(TASKS["digits"].extra_evaluations) == {"rendered_digits_accuracy"}
    assert TASKS["fruits"].split == "frames" and TASKS["catsdogs"].split == TASKS["signs"].split == "grouped"


def test_build_card_records_the_split_and_the_recipe():
    data = _dataset()
    splits = split_dataset(data, 0.25, seed=3, kind="recording")
    arch = _arch(schedule="cosine", warmup_epochs=1)
    options = Options(epochs=4, batch_size=8, learning_rate=0.01, seed=3, val_fraction=0.25)
    model = _tiny(SPEC, 2)
    validation = metrics_for(np.full((len(splits[1]), 2), 0.5), splits[1].y, data.class_names)
    card = build_card(
        dataclasses.replace(TASKS["fruits"], split="recording"),
        arch,
        data,
        splits,
        options,
        model,
        validation,
        12.5,
        "python -m training ...",
        None,
    )
    assert card.training.split == "recording" and "whole recordings" in card.data.validation_source
    assert card.training.optimizer == "adam + 1-epoch warm-up + cosine decay"
    assert card.training.wall_time_seconds == 12.5 and card.parameters.total == model.count_params()
    assert sum(card.data.train_counts.values()) + sum(card.data.validation_counts.values()) == len(data.train)


def test_batchnorm_recalibration_sets_the_clean_images_statistics_and_nothing_else():
    image = keras.Input(shape=SPEC.shape, name="image")
    features = keras.layers.Conv2D(3, 3, name="conv")(keras.layers.Rescaling(1 / 255)(image))
    normed = keras.layers.BatchNormalization(momentum=0.99, name="bn")(features)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(normed))
    model = keras.Model(image, outputs)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.full(3, 100.0, np.float32))  # statistics of some other distribution
    bn.moving_variance.assign(np.full(3, 50.0, np.float32))
    weights = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(1).integers(0, 256, (50, *SPEC.shape)).astype(np.uint8)

    assert recalibrate_batchnorm(model, x, batch_size=16, seed=0) == 1

    inputs = keras.Model(image, features)(x.astype(np.float32)).numpy()
    batches = [inputs[np.random.default_rng(0).permutation(50)[start : start + 16]] for start in (0, 16, 32)]
    expected_mean = np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0)  # the 3 full batches of 16
    expected_variance = np.mean([b.var(axis=(0, 1, 2)) for b in batches], axis=0)
    np.testing.assert_allclose(bn.moving_mean.numpy(), expected_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), expected_variance, rtol=1e-3, atol=1e-5)
    assert bn.momentum == 0.99
    moving = {id(bn.moving_mean), id(bn.moving_variance)}
    for before, after, variable in zip(weights, model.get_weights(), model.weights, strict=True):
        if id(variable) not in moving:
            np.testing.assert_array_equal(before, after)  # no weight is trained
