"""Datasets -> fit -> evaluate -> a model version on disk."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from modelcard import (
    CARD_FILE,
    MODEL_FILE,
    DataProvenance,
    ModelCard,
    ParameterCount,
    ReferenceResult,
    TrainingRun,
    ValidationMetrics,
)
from training.architectures import Architecture, augmentation_layers
from training.datasets import Dataset, Split, stratified_split
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


def metrics_for(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> ValidationMetrics:
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
    return ValidationMetrics(
        accuracy=float((predicted == labels).mean()) if len(labels) else 0.0,
        loss=loss,
        per_class_accuracy=per_class,
        confusion_matrix=confusion.tolist(),
    )


def split_dataset(dataset: Dataset, fraction: float, seed: int) -> tuple[Split, Split]:
    train_idx, val_idx = stratified_split(dataset.train.y, fraction, seed)
    x, y = dataset.train.x, dataset.train.y
    return Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])


def train(
    task: Task,
    arch: Architecture,
    dataset: Dataset,
    options: Options,
    out: Path,
    command: str,
    reference: Path | None = None,
    log=print,
) -> tuple[Path, ModelCard]:
    """Train `arch` on `dataset`, validate on a stratified split, write a new version."""
    make_deterministic(options.seed)
    train_split, val_split = split_dataset(dataset, options.val_fraction, options.seed)
    names = dataset.class_names
    log(
        f"{task.name}/{arch.name}: {len(train_split)} training, {len(val_split)} validation images, "
        f"{len(names)} classes, input {arch.input.shape}"
    )

    model = arch.build(arch.input, len(names))
    recipe = arch.recipe
    steps = options.epochs * int(np.ceil(len(train_split) / options.batch_size))
    lr = options.learning_rate
    if recipe.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(options.learning_rate, decay_steps=max(steps, 1), alpha=0.01)
    if recipe.weight_decay:
        optimizer = keras.optimizers.AdamW(lr, weight_decay=recipe.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(lr)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=["accuracy"],
    )
    augment = augmentation_layers(recipe.augmentation, options.seed, task.fill_mode, task.fill_value)
    started = time.monotonic()
    model.fit(
        _pipeline(train_split, len(names), options.batch_size, options.seed, augment, train=True),
        validation_data=_pipeline(val_split, len(names), 256, options.seed, None, train=False),
        epochs=options.epochs,
        verbose=2,
    )
    wall = time.monotonic() - started
    validation = metrics_for(predict_probabilities(model, val_split.x), val_split.y, names)
    log(f"validation accuracy {validation.accuracy:.4f} after {wall:.0f} s")

    reference_result = _reference_result(reference) if reference else None
    card = ModelCard(
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
            validation_source=(
                f"stratified {options.val_fraction:.0%} of the training data, shuffled with seed {options.seed}"
            ),
        ),
        training=TrainingRun(
            command=command,
            wall_time_seconds=round(wall, 1),
            epochs=options.epochs,
            batch_size=options.batch_size,
            seed=options.seed,
            val_fraction=options.val_fraction,
            optimizer=(f"adamw (weight decay {recipe.weight_decay})" if recipe.weight_decay else "adam")
            + (" + cosine decay" if recipe.schedule == "cosine" else ""),
            learning_rate=options.learning_rate,
            label_smoothing=recipe.label_smoothing,
            augmentation=list(recipe.augmentation),
            tensorflow_version=tf.__version__,
            keras_version=keras.__version__,
            python_version=platform.python_version(),
        ),
        validation=validation,
        reference=reference_result,
        notes=selection_note(arch.name, arch.description, validation.accuracy, reference_result),
        sha256="0" * 64,  # set by write_version
        created_at=datetime.now(UTC),
    )
    if task.name == "digits":
        from training.rendered_digits import rendered_digits_accuracy

        card.extra_evaluations["rendered_digits_accuracy"] = rendered_digits_accuracy(model)
        log(f"accuracy on digits rendered from fonts: {card.extra_evaluations['rendered_digits_accuracy']:.4f}")
    picked = np.random.default_rng(options.seed).permutation(len(val_split))[:PARITY_IMAGES]
    path = write_version(
        out,
        _without_training_state(model),
        card,
        parity_inputs=val_split.x[np.sort(picked)],
        parity_source=f"{len(picked)} validation images picked with seed {options.seed}",
    )
    log(f"wrote {path}")
    return path, ModelCard.model_validate_json((path / CARD_FILE).read_text())


def selection_note(arch: str, description: str, accuracy: float, reference: ReferenceResult | None) -> str:
    """Which architecture this version is, and how it compares with the reference post's."""
    note = f"Architecture {arch!r}: {description}. Validation accuracy {accuracy:.2%}"
    if reference is None:
        return note + "."
    gain = accuracy - reference.validation_accuracy
    return (
        f"{note}, against {reference.validation_accuracy:.2%} for the reference post's architecture "
        f"({reference.architecture!r}, {reference.parameters:,} parameters) trained on the same split with its "
        f"post's recipe for {reference.epochs} epochs: {gain:+.2%}. Shipped because it measures best on validation."
    )


def _without_training_state(model: keras.Model) -> keras.Model:
    """An uncompiled copy: the shipped file holds weights, not optimizer slots (3x smaller).

    Rebuilt from its config: keras.models.clone_model would carry the optimizer along."""
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def _reference_result(folder: Path) -> ReferenceResult:
    card = ModelCard.model_validate_json((Path(folder) / CARD_FILE).read_text())
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


def evaluate(folder: Path, dataset: Dataset, log=print) -> ValidationMetrics:
    """Accuracy, per-class accuracy and confusion matrix of a written version.

    Uses the dataset's test part when it has one, else the same validation split the
    model was validated on (same seed and fraction as its card).
    """
    model, card = load_version(folder)
    if dataset.class_names != card.class_names:
        raise ValueError(
            f"dataset classes {dataset.class_names[:5]}... differ from the model's {card.class_names[:5]}..."
        )
    if dataset.test is not None and len(dataset.test):
        part, which = dataset.test, "test split"
    else:
        _, part = split_dataset(dataset, card.training.val_fraction, card.training.seed)
        which = "validation split carved as in training"
    metrics = metrics_for(predict_probabilities(model, part.x), part.y, card.class_names)
    log(f"{card.name} v{card.version} on the {which} ({len(part)} images): accuracy {metrics.accuracy:.4f}")
    width = max(len(n) for n in card.class_names)
    for name, acc in metrics.per_class_accuracy.items():
        log(f"  {name:<{width}}  {acc:.4f}")
    log("confusion matrix (rows: true, columns: predicted):")
    for name, row in zip(card.class_names, metrics.confusion_matrix, strict=True):
        log(f"  {name:<{width}}  " + " ".join(f"{v:4d}" for v in row))
    log(json.dumps({"accuracy": metrics.accuracy, "images": len(part), "part": which}))
    return metrics
