"""The four tasks: which loader reads each dataset and where its public archive lives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from training.datasets import Loader, load_catsdogs, load_fruits, load_mnist, load_signs


@dataclass(frozen=True)
class Source:
    """A public archive of a dataset. `sha256=None` means no checksum is pinned: the user
    must pass one (`--sha256`), since an unchecked download is never used."""

    url: str
    filename: str
    sha256: str | None
    layout_hint: str


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    load: Loader
    layout_hint: str
    source: Source | None
    fill_mode: str = "reflect"  # how augmentation fills pixels it moves in
    fill_value: float = 0.0
    # how validation is carved: "grouped", "stratified", "recording" or "frames" (fit.split_dataset)
    split: str = "grouped"
    # Figures measured on every trained model beyond validation: name -> f(model, input spec).
    extra_evaluations: dict[str, Callable] = field(default_factory=dict)


def _rendered_digits_accuracy(model, spec) -> float:
    from training.rendered_digits import rendered_digits_accuracy

    return rendered_digits_accuracy(model, spec)


TASKS: dict[str, Task] = {
    "digits": Task(
        "digits",
        "handwritten digits 0-9 (MNIST), 28x28 grey, white digit on black",
        load_mnist,
        "mnist.npz, mnist_train.npz, or train-images-idx3-ubyte.gz + train-labels-idx1-ubyte.gz",
        Source(
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
            "mnist.npz",
            "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
            "mnist.npz",
        ),
        fill_mode="constant",
        fill_value=0.0,
        extra_evaluations={"rendered_digits_accuracy": _rendered_digits_accuracy},
    ),
    "fruits": Task(
        "fruits",
        "Fruits-360, 100x100 RGB on white",
        load_fruits,
        "Training/<class>/*.jpg and optionally Test/<class>/*.jpg",
        Source(
            "https://github.com/Horea94/Fruit-Images-Dataset/archive/refs/heads/master.zip",
            "fruits-360.zip",
            None,
            "the archive's folder holding Training/ and Test/",
        ),
        fill_mode="constant",
        fill_value=255.0,
        # Neighbouring frames of one turning fruit are near-identical: validate on a range of angles
        # each recording never showed in training. ("recording", holding out whole views, is stricter
        # still, but each class here has only two recordings: see models/README.md.)
        split="frames",
    ),
    "signs": Task(
        "signs",
        "SIGNS hand signs 0-5, 64x64 RGB",
        load_signs,
        "train_signs.h5 and optionally test_signs.h5",
        None,  # distributed with the deeplearning.ai course only; no public archive to fetch
    ),
    "catsdogs": Task(
        "catsdogs",
        "cats vs dogs photos, any size, RGB",
        load_catsdogs,
        "train/cats/*.jpg + train/dogs/*.jpg (optionally validation/...), or Kaggle's cat.N.jpg / dog.N.jpg",
        Source(
            "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip",
            "cats_and_dogs_filtered.zip",
            None,
            "cats_and_dogs_filtered/ with train/ and validation/",
        ),
    ),
}
