"""Accuracy and a confusion matrix when the scored images sit in class-named folders."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from service.client.rows import Row

MAX_MATRIX_CLASSES = 20


def folder_labels(paths: Sequence[str], class_names: Sequence[str]) -> dict[str, str] | None:
    """Each path's true class from its parent folder, when every folder names one of the classes.

    Folder names are matched exactly, else case-insensitively (`Cats/` for class `cats`).

    Args:
        paths: the scored paths.
        class_names: the model's classes.

    Returns:
        {path: class name}, or None when some path's folder is not a class (unlabelled input).
    """
    exact = set(class_names)
    folded = {name.casefold(): name for name in class_names}
    labels = {}
    for path in paths:
        folder = Path(path).parent.name
        name = folder if folder in exact else folded.get(folder.casefold())
        if name is None:
            return None
        labels[path] = name
    return labels or None


@dataclass
class Evaluation:
    """How the predictions compare with the folder labels.

    Attributes:
        classes: class names in the model's order, restricted to those seen (true or predicted).
        matrix: counts, rows: true class, columns: predicted class.
        correct: images predicted as their folder's class.
        total: images with a prediction (error rows are not counted).
        errors: error rows among the labelled images.
    """

    classes: list[str]
    matrix: list[list[int]]
    correct: int
    total: int
    errors: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def per_class(self) -> dict[str, tuple[int, int]]:
        """{class: (correct, total)} for each true class present."""
        return {
            name: (self.matrix[i][i], sum(self.matrix[i])) for i, name in enumerate(self.classes) if sum(self.matrix[i])
        }

    def render(self) -> str:
        lines = [f"accuracy: {self.accuracy:.4f} ({self.correct}/{self.total} images in class folders"]
        lines[0] += f"; {self.errors} error row(s) not counted)" if self.errors else ")"
        if len(self.classes) <= MAX_MATRIX_CLASSES:
            width = max(5, *(len(name) for name in self.classes), len(str(max(map(max, self.matrix), default=0))) + 1)
            lines.append("confusion matrix (rows: true class, columns: predicted class):")
            lines.append(" " * width + " " + " ".join(f"{name:>{width}}" for name in self.classes))
            for name, counts in zip(self.classes, self.matrix, strict=True):
                lines.append(f"{name:>{width}} " + " ".join(f"{count:>{width}}" for count in counts))
        else:
            confusions = Counter(
                {
                    (self.classes[t], self.classes[p]): count
                    for t, row in enumerate(self.matrix)
                    for p, count in enumerate(row)
                    if t != p and count
                }
            )
            lines.append(f"{len(self.classes)} classes: the most frequent confusions (true -> predicted):")
            for (true, predicted), count in confusions.most_common(MAX_MATRIX_CLASSES):
                lines.append(f"  {count:6d}  {true} -> {predicted}")
        lines.append("per-class accuracy:")
        for name, (right, total) in self.per_class().items():
            lines.append(f"  {name}: {right / total:.4f} ({right}/{total})")
        return "\n".join(lines)


def evaluate(rows: Sequence[Row], labels: dict[str, str], class_names: Sequence[str]) -> Evaluation:
    """Compare each row's predicted label with its folder's class.

    Args:
        rows: the output rows (one per path in `labels`).
        labels: {path: true class} from `folder_labels`.
        class_names: the model's classes, giving the matrix order.

    Returns:
        The `Evaluation`.
    """
    pairs = []
    errors = 0
    for row in rows:
        true = labels.get(row.path)
        if true is None:
            continue
        if row.failed or row.label is None:
            errors += 1
            continue
        pairs.append((true, row.label))
    seen = {name for pair in pairs for name in pair}
    classes = [name for name in class_names if name in seen] + sorted(seen - set(class_names))
    position = {name: i for i, name in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    for true, predicted in pairs:
        matrix[position[true]][position[predicted]] += 1
    correct = sum(1 for true, predicted in pairs if true == predicted)
    return Evaluation(classes, matrix, correct, len(pairs), errors)
