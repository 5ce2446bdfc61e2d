"""python -m training train|evaluate|archs|export|check-split ... (see --help)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

TASK_NAMES = ["digits", "fruits", "signs", "catsdogs"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description="Train and evaluate the Keras models.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model and write a new version to the model store")
    train.add_argument("task", choices=TASK_NAMES)
    train.add_argument("--data", type=Path, required=True, help="the dataset's folder, as distributed")
    train.add_argument(
        "--arch",
        default="improved",
        help="'seed' (the reference post's model), 'improved' (this project's), or another of "
        "the task's in training/architectures.py (fruits: robust, wide; catsdogs: residual)",
    )
    train.add_argument("--epochs", type=int, help="default: the architecture's recipe")
    train.add_argument("--batch-size", type=int, help="default: the architecture's recipe")
    train.add_argument("--learning-rate", type=float, help="default: the architecture's recipe")
    train.add_argument("--val-fraction", type=float, help="share of each class held out for validation")
    train.add_argument(
        "--split",
        choices=["grouped", "stratified", "recording", "frames"],
        help="how validation is carved (default: the task's: grouped, per class at random with the copies of an "
        "image on one side; fruits: by frame range, its neighbouring frames being near-identical)",
    )
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--out", type=Path, default=Path("models"), help="the model store (default: models)")
    train.add_argument(
        "--no-export",
        action="store_true",
        help="write model.keras and its card only, not the ONNX/OpenVINO files (a few seconds a run); add them "
        "later with `python -m training export <version folder>`, or let the service export at load",
    )
    train.add_argument(
        "--reference", type=Path, help="a version trained with --arch seed, to compare against in the card"
    )
    train.add_argument("--download", action="store_true", help="fetch the public archive into --data first")
    train.add_argument("--url", help="with --download: another archive address (e.g. a mirror or file://)")
    train.add_argument("--sha256", help="with --download: the archive's expected sha256")

    evaluate = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix of a version")
    evaluate.add_argument("task", choices=TASK_NAMES)
    evaluate.add_argument("--model", type=Path, required=True, help="a version folder, e.g. models/digits/1")
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument(
        "--split",
        choices=["grouped", "stratified", "recording", "frames"],
        help="validate on this kind of split instead of the card's (e.g. an old version on a stricter split)",
    )
    evaluate.add_argument("--val-fraction", type=float, help="with --split: the share held out (default: the card's)")

    check = sub.add_parser(
        "check-split", help="near-duplicate images across the validation split a training run would carve"
    )
    check.add_argument("task", choices=TASK_NAMES)
    check.add_argument("--data", type=Path, required=True)
    check.add_argument("--arch", default="improved")
    check.add_argument("--val-fraction", type=float)
    check.add_argument("--seed", type=int, default=42)
    check.add_argument("--max-distance", type=int, default=4, help="differing bits (of 64) that count as alike")
    check.add_argument("--split", choices=["grouped", "stratified", "recording", "frames"], help="default: the task's")

    export = sub.add_parser(
        "export", help="add ONNX / OpenVINO exports, parity inputs and the model's outputs on them to a version"
    )
    export.add_argument("version", type=Path, help="a version folder, e.g. models/digits/1")
    export.add_argument("--format", action="append", choices=["onnx", "openvino"], help="default: both")
    export.add_argument(
        "--samples", type=Path, nargs="+", default=[], help="real validation images (files or folders) for the gate"
    )
    export.add_argument("--source", default="", help="how the samples were chosen, recorded in the card")
    export.add_argument(
        "--reference-only",
        action="store_true",
        help="only store the model's outputs on the gate inputs (the exports and parity inputs stay)",
    )

    sub.add_parser("archs", help="list the architectures with their parameter counts")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    # Imported here so that --help is instant and argument errors come before TensorFlow loads.
    from training.architectures import ARCHITECTURES, get_architecture
    from training.datasets import DatasetError
    from training.tasks import TASKS

    try:
        if args.command == "archs":
            for task_name, archs in ARCHITECTURES.items():
                for name, arch in archs.items():
                    model = arch.build(arch.input, {"digits": 10, "fruits": 60, "signs": 6}.get(task_name, 2))
                    print(
                        f"{task_name:9s} {name:9s} {model.count_params():>11,d}  input {arch.input.shape}  "
                        f"{arch.description}"
                    )
            return 0

        if args.command == "export":
            from modelcard import ExportFormat
            from modelcard.exporting import FORMATS
            from training.export import export_version

            if not (args.version / "model.json").is_file():
                raise DatasetError(f"{args.version}: expected a model version folder with model.json, found none")
            formats: tuple[ExportFormat, ...] = () if args.reference_only else tuple(args.format or FORMATS)
            export_version(args.version, formats, args.samples, args.source)
            return 0

        task = TASKS[args.task]
        if args.command == "evaluate":
            from modelcard import ModelCard
            from training.fit import evaluate

            card_file = args.model / "model.json"
            if not card_file.is_file():
                raise DatasetError(f"{args.model}: expected a model version folder with model.json, found none")
            card = ModelCard.model_validate_json(card_file.read_text())
            _require_data(task, args.data)
            evaluate(args.model, task.load(args.data, card.input), split=args.split, fraction=args.val_fraction)
            return 0

        arch = get_architecture(args.task, args.arch)
        if args.command == "check-split":
            _require_data(task, args.data)
            return _check_split(task, arch, args)
        data_path = args.data
        if args.download:
            from training.download import fetch

            data_path = fetch(task, args.data, url=args.url, sha256=args.sha256)
            print(f"downloaded and unpacked into {data_path}")
        else:
            _require_data(task, data_path, download_hint=True)
        from training.fit import Options, train

        if args.split:
            import dataclasses

            task = dataclasses.replace(task, split=args.split)

        recipe = arch.recipe
        options = Options(
            epochs=args.epochs or recipe.epochs,
            batch_size=args.batch_size or recipe.batch_size,
            learning_rate=args.learning_rate or recipe.learning_rate,
            seed=args.seed,
            val_fraction=args.val_fraction or arch.val_fraction,
        )
        print(f"loading {task.name} from {data_path} ...", flush=True)
        dataset = task.load(data_path, arch.input)
        command = "python -m training " + shlex.join(sys.argv[1:] if argv is None else argv)
        train(task, arch, dataset, options, args.out, command, reference=args.reference, export=not args.no_export)
        return 0
    except (DatasetError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {message}", file=sys.stderr)
        return 2


def _require_data(task, path: Path, download_hint: bool = False) -> None:
    from training.datasets import DatasetError

    if not path.exists():
        raise DatasetError(
            f"{path}: no dataset there. Expected {task.layout_hint}"
            + ("; or pass --download to fetch it" if download_hint and task.source else "")
        )


def _check_split(task, arch, args) -> int:
    """Print the near-duplicate pairs across the split; exit status 1 when there are any."""
    from training.duplicates import near_duplicates
    from training.fit import split_indices

    dataset = task.load(args.data, arch.input)
    fraction = args.val_fraction or arch.val_fraction
    kind = args.split or task.split
    train_idx, val_idx = split_indices(dataset, fraction, args.seed, kind)
    train, val = dataset.train.take(train_idx), dataset.train.take(val_idx)
    # within a class: a 9x8 hash of a centred object on a plain background cannot tell classes apart
    pairs = [p for p in near_duplicates(train.x, val.x, args.max_distance) if train.y[p.train] == val.y[p.validation]]

    def name(indices, i: int) -> str:  # the file, or the image's position in the dataset's file (SIGNS, MNIST)
        files = dataset.train.files
        return str(files[indices[i]]) if files is not None else f"#{indices[i]}"

    for pair in pairs:
        print(f"{pair.distance:2d} bits  {name(train_idx, pair.train)}  ~  {name(val_idx, pair.validation)}")
    print(
        f"{len(pairs)} near-duplicate pair(s) of one class (dHash distance <= {args.max_distance} of 64) between "
        f"{len(train)} training and {len(val)} validation images ({kind} split, seed {args.seed})"
    )
    return 1 if pairs else 0


if __name__ == "__main__":
    sys.exit(main())
