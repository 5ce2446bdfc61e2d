"""Write an untrained model store shaped like the shipped one, to try the benchmarks without it.

Each task gets its `improved` architecture (or `--arch seed`) with random weights: the compute
per image is the real one, the answers are not. Nothing here is a result to report.

    python bench/tiny_store.py /tmp/bench-models --tasks digits fruits
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import keras  # noqa: E402

from modelcard import (  # noqa: E402
    DataProvenance,
    ModelCard,
    ParameterCount,
    TrainingRun,
    ValidationMetrics,
)
from training.architectures import get_architecture  # noqa: E402
from training.store import write_version  # noqa: E402

CLASSES = {"digits": 10, "fruits": 60, "signs": 6, "catsdogs": 2}


def write_untrained(root: Path, task: str, arch_name: str = "improved") -> Path:
    arch = get_architecture(task, arch_name)
    names = [str(i) for i in range(CLASSES[task])] if task != "catsdogs" else ["cat", "dog"]
    model = arch.build(arch.input, len(names))
    counts = dict.fromkeys(names, 0)
    card = ModelCard(
        name=task,
        version=1,
        task=task,
        description=f"UNTRAINED {task} model for benchmark smoke runs",
        class_names=names,
        input=arch.input,
        architecture=arch.name,
        parameters=ParameterCount(total=model.count_params(), trainable=model.count_params()),
        data=DataProvenance(
            path="none", format="none", train_counts=counts, validation_counts=counts, validation_source="none"
        ),
        training=TrainingRun(
            command="bench/tiny_store.py",
            wall_time_seconds=0,
            epochs=0,
            batch_size=0,
            seed=0,
            val_fraction=0,
            optimizer="none",
            learning_rate=0,
            tensorflow_version="n/a",
            keras_version=keras.__version__,
            python_version=platform.python_version(),
        ),
        validation=ValidationMetrics(
            accuracy=0, loss=0, per_class_accuracy=dict.fromkeys(names, 0.0), confusion_matrix=[]
        ),
        sha256="0" * 64,
        created_at=datetime.now(UTC),
    )
    return write_version(root, model, card)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--tasks", nargs="+", default=["digits", "fruits"], choices=sorted(CLASSES))
    parser.add_argument("--arch", default="improved", choices=["improved", "seed"])
    args = parser.parse_args()
    for task in args.tasks:
        print(write_untrained(args.root, task, args.arch))


if __name__ == "__main__":
    main()
