"""Datasets -> fit -> evaluate -> a model version on disk."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from modelcard import (
    CARD_FILE,
    MODEL_FILE,
    DataProvenance,
    InputSpec,
    ModelCard,
    ParameterCount,
    ReferenceResult,
    TrainingRun,
    ValidationMetrics,
    WrongPrediction,
    image_to_array,
)
from training.architectures import Architecture, augmentation_layers
from training.datasets import (
    FRAME_GAP,
    NEAR_DUPLICATE_MIN_SIDE,
    Dataset,
    Split,
    duplicate_groups,
    frame_range_split,
    recording_split,
    stratified_split,
)
from training.store import write_version
from training.tasks import Task

PARITY_IMAGES = 8  # real validation inputs stored with a version for the service's runtime parity gate


@dataclass
class Options:
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    val_fraction: float


def make_deterministic(seed: int) -> None:
    """Same seed, same data, same CPU -> the same weights."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def parameter_count(model: keras.Model) -> ParameterCount:
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    return ParameterCount(total=int(model.count_params()), trainable=trainable)


def _pipeline(
    split: Split, num_classes: int, batch_size: int, seed: int, augment: keras.Sequential | None, train: bool
) -> tf.data.Dataset:
    data = tf.data.Dataset.from_tensor_slices((split.x, split.y))
    if train:
        data = data.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes)))
    if augment is not None:
        data = data.map(lambda x, y: (augment(x, training=True), y))
    return data.prefetch(2)


def predict_probabilities(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Offline batch inference (model.predict is the right tool here, not in a server)."""
    return model.predict(x.astype(np.float32), batch_size=batch_size, verbose=0)


def metrics_for(
    probabilities: np.ndarray, labels: np.ndarray, class_names: list[str], files: np.ndarray | None = None
) -> ValidationMetrics:
    n = len(class_names)
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {
        name: float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else 0.0
        for i, name in enumerate(class_names)
    }
    picked = probabilities[np.arange(len(labels)), labels]
    loss = float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0)))) if len(labels) else 0.0
    wrong = []
    if files is not None:
        # The most confident mistakes first: those are the ones worth looking at.
        misses = np.flatnonzero(predicted != labels)
        misses = misses[np.argsort(-probabilities[misses, predicted[misses]], kind="stable")][:WRONG_EXAMPLES]
        wrong = [
            WrongPrediction(
                file=str(files[i]),
                true=class_names[labels[i]],
                predicted=class_names[predicted[i]],
                confidence=round(float(probabilities[i, predicted[i]]), 4),
            )
            for i in misses
        ]
    return ValidationMetrics(
        accuracy=float((predicted == labels).mean()) if len(labels) else 0.0,
        loss=loss,
        per_class_accuracy=per_class,
        confusion_matrix=confusion.tolist(),
        wrong_examples=wrong,
    )


WRONG_EXAMPLES = 20


def split_dataset(dataset: Dataset, fraction: float, seed: int, kind: str) -> tuple[Split, Split]:
    """(train, validation) carved from the training data as `split_indices` says."""
    train_idx, val_idx = split_indices(dataset, fraction, seed, kind)
    return dataset.train.take(train_idx), dataset.train.take(val_idx)


def split_indices(dataset: Dataset, fraction: float, seed: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, validation) in the training data: `grouped` per class at random with the
    copies of an image on one side, `stratified` the same without looking for copies (the split of
    the versions trained before `grouped`), `recording` so that no recording has frames on both
    sides, or `frames`: a contiguous range of each recording's frames, with the frames next to it
    in neither part (needs file names)."""
    if kind in ("recording", "frames"):
        if dataset.train.files is None:
            raise ValueError(f"{dataset.path}: a split by {kind} needs the images' file names")
        files = list(dataset.train.files)
        if kind == "recording":
            train_idx, val_idx = recording_split(dataset.train.y, files, fraction, seed)
        else:
            train_idx, val_idx, _ = frame_range_split(dataset.train.y, files, fraction, seed)
    elif kind == "stratified":
        train_idx, val_idx = stratified_split(dataset.train.y, fraction, seed)
    elif kind == "grouped":
        groups = duplicate_groups(dataset.train.x, dataset.train.y)
        train_idx, val_idx = stratified_split(dataset.train.y, fraction, seed, groups)
    else:
        raise ValueError(f"unknown split {kind!r}: expected 'grouped', 'stratified', 'recording' or 'frames'")
    if not len(train_idx) or not len(val_idx):
        by_frames = kind in ("recording", "frames")
        needs = ": it needs recordings of several frames, named as Fruits-360's" if by_frames else ""
        raise ValueError(
            f"the {kind} split of {len(dataset.train)} images left {len(train_idx)} for training and "
            f"{len(val_idx)} for validation{needs}"
        )
    return train_idx, val_idx


def describe_split(kind: str, fraction: float, seed: int) -> str:
    if kind == "recording":
        return (
            f"whole recordings held out per class (at least {fraction:.0%} of each class, picked with seed {seed}); "
            "no recording has frames on both sides"
        )
    if kind == "frames":
        return (
            f"a contiguous {fraction:.0%} of each recording's frames held out (start picked with seed {seed}); "
            f"the frames within {FRAME_GAP} frame numbers of that range are in neither part"
        )
    if kind == "grouped":
        return (
            f"stratified {fraction:.0%} of the training data, shuffled with seed {seed}; copies of an image "
            f"(identical pixels, or for photos of {NEAR_DUPLICATE_MIN_SIDE}px or more an identical dHash) on one side"
        )
    return f"stratified {fraction:.0%} of the training data, shuffled with seed {seed}"


def compile_model(arch: Architecture, num_classes: int, options: Options, train_size: int) -> keras.Model:
    """Build `arch` and compile it with its recipe's optimizer, schedule and loss."""
    model = arch.build(arch.input, num_classes)
    recipe = arch.recipe
    steps = options.epochs * int(np.ceil(train_size / options.batch_size))
    lr = options.learning_rate
    if recipe.schedule == "cosine":
        warmup = min(recipe.warmup_epochs * int(np.ceil(train_size / options.batch_size)), steps // 2)
        lr = keras.optimizers.schedules.CosineDecay(
            options.learning_rate / 10 if warmup else options.learning_rate,
            decay_steps=max(steps - warmup, 1),
            alpha=0.01,
            warmup_target=options.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    if recipe.weight_decay:
        optimizer = keras.optimizers.AdamW(lr, weight_decay=recipe.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(lr)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=["accuracy"],
    )
    return model


def fit_model(
    model: keras.Model, task: Task, arch: Architecture, train_split: Split, val_split: Split, options: Options
) -> float:
    """Fit with the recipe's augmentation (in the data pipeline only); returns the wall time in seconds."""
    num_classes = model.output_shape[-1]
    augment = augmentation_layers(arch.recipe.augmentation, options.seed, task.fill_mode, task.fill_value)
    started = time.monotonic()
    model.fit(
        _pipeline(train_split, num_classes, options.batch_size, options.seed, augment, train=True),
        validation_data=_pipeline(val_split, num_classes, 256, options.seed, None, train=False),
        epochs=options.epochs,
        verbose=2,
    )
    if arch.recipe.recalibrate_batchnorm:
        recalibrate_batchnorm(model, train_split.x, options.batch_size, options.seed)
    return time.monotonic() - started


def recalibrate_batchnorm(model: keras.Model, x: np.ndarray, batch_size: int, seed: int) -> int:
    """Re-estimate every BatchNorm layer's moving mean and variance on the clean images `x`.

    During fitting they track the augmented batches; served images are not augmented. One pass
    in training mode over the full batches of `x` (shuffled with `seed`) replaces them by the
    average of the batch statistics; no weight changes. Returns the number of BatchNorm layers.
    """
    layers = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    order = np.random.default_rng(seed).permutation(len(x))
    starts = range(0, len(order) - batch_size + 1, batch_size) or range(1)  # full batches: each weighs the same
    try:
        for step, start in enumerate(starts):
            for layer in layers:
                layer.momentum = step / (step + 1)  # the running average of the batches so far
            model(np.asarray(x[order[start : start + batch_size]], np.float32), training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(layers)


def _all_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """`layer` and every layer inside it, nested models included."""
    return [layer, *(inner for child in getattr(layer, "layers", []) for inner in _all_layers(child))]


def extra_evaluations(task: Task, model: keras.Model, spec: InputSpec, log=print) -> dict[str, float]:
    """Figures beyond validation that a task defines (digits: accuracy on font-rendered digits)."""
    figures = {name: measure(model, spec) for name, measure in task.extra_evaluations.items()}
    for name, value in figures.items():
        log(f"{name}: {value:.4f}")
    return figures


def optimizer_description(recipe) -> str:
    text = f"adamw (weight decay {recipe.weight_decay})" if recipe.weight_decay else "adam"
    if recipe.schedule == "cosine":
        text += f" + {recipe.warmup_epochs}-epoch warm-up" if recipe.warmup_epochs else ""
        text += " + cosine decay"
    return text


def build_card(
    task: Task,
    arch: Architecture,
    dataset: Dataset,
    splits: tuple[Split, Split],
    options: Options,
    model: keras.Model,
    validation: ValidationMetrics,
    wall: float,
    command: str,
    reference: ReferenceResult | None,
) -> ModelCard:
    train_split, val_split = splits
    names = dataset.class_names
    return ModelCard(
        name=task.name,
        version=1,  # set by write_version
        task=task.name,
        description=task.description,
        class_names=names,
        input=arch.input,
        architecture=arch.name,
        architecture_description=arch.description,
        parameters=parameter_count(model),
        data=DataProvenance(
            path=str(dataset.path),
            format=dataset.format,
            train_counts=train_split.counts(names),
            validation_counts=val_split.counts(names),
            validation_source=describe_split(task.split, options.val_fraction, options.seed),
        ),
        training=TrainingRun(
            command=command,
            wall_time_seconds=round(wall, 1),
            epochs=options.epochs,
            batch_size=options.batch_size,
            seed=options.seed,
            val_fraction=options.val_fraction,
            split=cast(Any, task.split),
            optimizer=optimizer_description(arch.recipe),
            learning_rate=options.learning_rate,
            label_smoothing=arch.recipe.label_smoothing,
            augmentation=list(arch.recipe.augmentation),
            batchnorm_recalibrated=arch.recipe.recalibrate_batchnorm,
            tensorflow_version=tf.__version__,
            keras_version=keras.__version__,
            python_version=platform.python_version(),
        ),
        validation=validation,
        reference=reference,
        notes=selection_note(arch.name, arch.description, validation.accuracy, reference),
        sha256="0" * 64,  # set by write_version
        created_at=datetime.now(UTC),
    )


def train(
    task: Task,
    arch: Architecture,
    dataset: Dataset,
    options: Options,
    out: Path,
    command: str,
    reference: Path | None = None,
    log=print,
    export: bool = True,
) -> tuple[Path, ModelCard]:
    """Train `arch` on `dataset`, validate on the task's split, write a new version (with its
    ONNX/OpenVINO exports unless `export` is False)."""
    make_deterministic(options.seed)
    train_split, val_split = split_dataset(dataset, options.val_fraction, options.seed, task.split)
    # before the hours of training: the card will say the two were validated alike
    reference_result = _reference_result(reference, task, options, val_split, dataset) if reference else None
    log(
        f"{task.name}/{arch.name}: {len(train_split)} training, {len(val_split)} validation images "
        f"({task.split} split), {len(dataset.class_names)} classes, input {arch.input.shape}"
    )
    model = compile_model(arch, len(dataset.class_names), options, len(train_split))
    wall = fit_model(model, task, arch, train_split, val_split, options)
    validation = metrics_for(
        predict_probabilities(model, val_split.x), val_split.y, dataset.class_names, val_split.files
    )
    log(f"validation accuracy {validation.accuracy:.4f} after {wall:.0f} s")
    card = build_card(
        task, arch, dataset, (train_split, val_split), options, model, validation, wall, command, reference_result
    )
    card.extra_evaluations.update(extra_evaluations(task, model, arch.input, log))
    picked = np.random.default_rng(options.seed).permutation(len(val_split))[:PARITY_IMAGES]
    path = write_version(
        out,
        _without_training_state(model),
        card,
        parity_inputs=val_split.x[np.sort(picked)],
        parity_source=f"{len(picked)} validation images picked with seed {options.seed}",
        export=export,
    )
    log(f"wrote {path}")
    return path, ModelCard.model_validate_json((path / CARD_FILE).read_text())


def selection_note(arch: str, description: str, accuracy: float, reference: ReferenceResult | None) -> str:
    """Which architecture this version is, and how it compares with the reference post's."""
    note = f"Architecture {arch!r}: {description}. Validation accuracy {accuracy:.2%}"
    if reference is None:
        return note + "."
    gain = accuracy - reference.validation_accuracy
    which = "the reference post's architecture" if reference.architecture == "seed" else "the architecture"
    recipe = "its post's recipe" if reference.architecture == "seed" else "its recipe"
    verdict = "Better on validation" if gain > 0 else "Not better on validation"
    return (
        f"{note}, against {reference.validation_accuracy:.2%} for {which} "
        f"({reference.architecture!r}, {reference.parameters:,} parameters) trained on the same split with {recipe} "
        f"for {reference.epochs} epochs: {gain:+.2%}. {verdict} than the reference."
    )


def _without_training_state(model: keras.Model) -> keras.Model:
    """An uncompiled copy: the shipped file holds weights, not optimizer slots (3x smaller).

    Rebuilt from its config: keras.models.clone_model would carry the optimizer along."""
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def _reference_result(
    folder: Path, task: Task, options: Options, val_split: Split, dataset: Dataset
) -> ReferenceResult:
    """The reference version's figures, after checking it was validated on this run's split.

    Raises:
        ValueError: another task, split, seed or fraction, or other validation images per class.
    """
    card_file = Path(folder) / CARD_FILE
    if not card_file.is_file():
        raise ValueError(f"--reference {folder}: expected a version folder with {CARD_FILE}")
    card = ModelCard.model_validate_json(card_file.read_text())
    ours = (task.name, task.split, options.seed, options.val_fraction, val_split.counts(dataset.class_names))
    theirs = (
        card.task,
        card.training.split,
        card.training.seed,
        card.training.val_fraction,
        card.data.validation_counts,
    )
    if ours != theirs:
        names = ("task", "split", "seed", "validation fraction", "validation images per class")
        differ = [f"{n} {t!r} here, {o!r} there" for n, t, o in zip(names, ours, theirs, strict=True) if t != o][:2]
        raise ValueError(
            f"--reference {folder} was not validated on this run's split ({'; '.join(differ)}): "
            "a card must not compare figures from different validation sets"
        )
    return ReferenceResult(
        architecture=card.architecture,
        parameters=card.parameters.total,
        validation_accuracy=card.validation.accuracy,
        epochs=card.training.epochs,
        wall_time_seconds=card.training.wall_time_seconds,
        command=card.training.command,
    )


def load_version(folder: Path) -> tuple[keras.Model, ModelCard]:
    """Load a written version (safe mode on) after checking its sha256 against the card."""
    from modelcard import load_verified_model

    folder = Path(folder)
    card = ModelCard.model_validate_json((folder / CARD_FILE).read_text())
    return load_verified_model(folder / MODEL_FILE, card.sha256), card


def evaluate(
    folder: Path, dataset: Dataset, log=print, split: str | None = None, fraction: float | None = None
) -> ValidationMetrics:
    """Accuracy, per-class accuracy and confusion matrix of a written version.

    Uses the dataset's test part when it has one, else the same validation split the
    model was validated on (same seed and fraction as its card), or another `split` kind
    (and `fraction`): e.g. an older version on a newer, stricter split. Images go through
    the card's declared preprocessing (`input.preprocess`), exactly as the service applies it.
    """
    model, card = load_version(folder)
    if dataset.class_names != card.class_names:
        raise ValueError(
            f"dataset classes {dataset.class_names[:5]}... differ from the model's {card.class_names[:5]}..."
        )
    if dataset.test is not None and len(dataset.test) and split is None:
        part, which = dataset.test, "test split"
    else:
        kind = split or card.training.split
        _, part = split_dataset(dataset, fraction or card.training.val_fraction, card.training.seed, kind)
        which = f"{kind} validation split" + (" carved as in training" if kind == card.training.split else "")
    x = part.x
    if card.input.preprocess != "none":
        x = np.stack(
            [
                image_to_array(Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image), card.input)
                for image in x
            ]
        )
    metrics = metrics_for(predict_probabilities(model, x), part.y, card.class_names, part.files)
    through = f", through its {card.input.preprocess!r} preprocessing" if card.input.preprocess != "none" else ""
    log(f"{card.name} v{card.version} on the {which} ({len(part)} images{through}): accuracy {metrics.accuracy:.4f}")
    width = max(len(n) for n in card.class_names)
    for name, acc in metrics.per_class_accuracy.items():
        log(f"  {name:<{width}}  {acc:.4f}")
    log("confusion matrix (rows: true, columns: predicted):")
    for name, row in zip(card.class_names, metrics.confusion_matrix, strict=True):
        log(f"  {name:<{width}}  " + " ".join(f"{v:4d}" for v in row))
    if metrics.wrong_examples:
        log(f"most confident mistakes (up to {WRONG_EXAMPLES}):")
        for wrong in metrics.wrong_examples:
            log(f"  {wrong.file}: {wrong.true} taken for {wrong.predicted} ({wrong.confidence:.3f})")
    summary = {"accuracy": metrics.accuracy, "images": len(part), "part": which, "preprocess": card.input.preprocess}
    log(json.dumps(summary))
    return metrics
