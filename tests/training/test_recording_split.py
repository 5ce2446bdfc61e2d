"""Fruits-360 is split by recording: no recording has frames on both sides of the split."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from training.architectures import RGB100
from training.datasets import frame_range_split, load_fruits, recording_of, recording_split
from training.fit import split_dataset


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("12_100.jpg", ("main", 12)),
        ("r_12_100.jpg", ("r", 12)),
        ("r2_41_100.jpg", ("r2", 41)),
        ("Apple Red 1/r3_0_100.jpg", ("r3", 0)),
        ("7.jpg", ("main", 7)),
        ("IMG_2044.jpg", ("IMG", 2044)),
        ("photo.jpg", ("photo.jpg", 0)),
    ],
)
def test_file_names_give_recording_and_frame(name, expected):
    assert recording_of(name) == expected


def _recordings_by_side(files, train_idx, val_idx):
    sides = defaultdict(set)
    for side, index in (("train", train_idx), ("val", val_idx)):
        for i in index:
            fruit = files[i].split("/")[0]
            sides[(fruit, recording_of(files[i])[0])].add(side)
    return sides


def test_the_fruits_loader_splits_by_recording(fruits_recordings):
    dataset = load_fruits(fruits_recordings, RGB100)
    files = dataset.train.files
    assert files is not None and len(files) == len(dataset.train)
    assert files[0].split("/")[0] in dataset.class_names
    train, val = split_dataset(dataset, 0.2, seed=42, kind="recording")
    assert len(train) + len(val) == len(dataset.train)
    assert not set(train.files) & set(val.files)
    train_idx = np.flatnonzero(np.isin(files, train.files))
    val_idx = np.flatnonzero(np.isin(files, val.files))
    sides = _recordings_by_side(list(files), train_idx, val_idx)
    several = {key: side for key, side in sides.items() if key[0] != "Kiwi"}
    assert all(len(side) == 1 for side in several.values()), several  # no recording on both sides
    for fruit in ("Apple Red 1", "Banana"):
        assert {s for (f, _), side in several.items() if f == fruit for s in side} == {"train", "val"}
    # Kiwi has one recording: a contiguous range of its frames is held out.
    kiwi_val = sorted(recording_of(f)[1] for f in val.files if f.startswith("Kiwi/"))
    kiwi_all = sorted(recording_of(f)[1] for f in files if f.startswith("Kiwi/"))
    assert len(kiwi_val) == 3  # 20% of 15
    start = kiwi_all.index(kiwi_val[0])
    assert kiwi_all[start : start + len(kiwi_val)] == kiwi_val
    # images and labels travel with their names
    label = {name: i for i, name in enumerate(dataset.class_names)}
    assert all(label[f.split("/")[0]] == y for f, y in zip(val.files, val.y, strict=True))


def test_the_recording_split_is_seeded_and_never_empties_a_side():
    labels = np.array([0] * 6 + [1] * 6)
    files = [f"{p}{i}_100.jpg" for p in ("", "r_") for i in range(3)] * 2
    runs = {tuple(recording_split(labels, files, 0.9, seed)[1]) for seed in range(20)}
    assert len(runs) > 1  # the held-out recording depends on the seed
    for seed in range(20):
        train_idx, val_idx = recording_split(labels, files, 0.9, seed)
        assert sorted(np.concatenate([train_idx, val_idx])) == list(range(12))
        for cls in (0, 1):  # even at 90%, one recording stays in training
            assert (labels[train_idx] == cls).sum() == 3 and (labels[val_idx] == cls).sum() == 3
    np.testing.assert_array_equal(recording_split(labels, files, 0.2, 3)[1], recording_split(labels, files, 0.2, 3)[1])


def test_the_recording_split_holds_out_recordings_until_the_fraction_is_reached():
    labels = np.zeros(40, dtype=int)
    files = [f"{p}{i}_100.jpg" for p in ("", "r_", "r2_", "r3_") for i in range(10)]
    _, val_idx = recording_split(labels, files, 0.3, seed=0)
    assert len(val_idx) == 20 and len({recording_of(files[i])[0] for i in val_idx}) == 2
    with pytest.raises(ValueError, match="between 0 and 1"):
        recording_split(labels, files, 1.0, seed=0)
    with pytest.raises(ValueError, match="file names"):
        recording_split(labels, files[:-1], 0.3, seed=0)


def _circular_distance(a: int, b: int, period: int) -> int:
    return min((a - b) % period, (b - a) % period)


@pytest.mark.parametrize("seed", range(12))
def test_the_frame_split_holds_out_one_contiguous_run_per_recording_with_a_gap(seed):
    # two recordings of one class, frames sampled unevenly as Fruits-360 does
    rng = np.random.default_rng(100 + seed)
    frames = {prefix: sorted(rng.choice(330, 60, replace=False).tolist()) for prefix in ("", "r_")}
    files = [f"{prefix}{f}_100.jpg" for prefix, numbers in frames.items() for f in numbers]
    labels = np.zeros(len(files), dtype=int)
    train_idx, val_idx, out_idx = frame_range_split(labels, files, 0.2, seed, gap=10)
    assert sorted(np.concatenate([train_idx, val_idx, out_idx]).tolist()) == list(range(len(files)))
    for prefix, numbers in frames.items():
        name = prefix.rstrip("_") or "main"
        held = {recording_of(files[i])[1] for i in val_idx if recording_of(files[i])[0] == name}
        trained = {recording_of(files[i])[1] for i in train_idx if recording_of(files[i])[0] == name}
        assert len(held) == 12  # 20% of 60
        positions = sorted(numbers.index(f) for f in held)  # one run in frame order, possibly wrapping round
        gaps = sum((b - a) % 60 != 1 for a, b in zip(positions, positions[1:] + positions[:1], strict=True))
        assert gaps == 1, positions
        period = numbers[-1] + 1
        # no training frame within 10 frame numbers of a held-out one
        assert all(_circular_distance(t, h, period) > 10 for t in trained for h in held)


def test_the_fruits_loader_splits_by_frame_range(fruits_recordings):
    dataset = load_fruits(fruits_recordings, RGB100)
    train, val = split_dataset(dataset, 0.2, seed=42, kind="frames")
    assert not set(train.files) & set(val.files)
    assert len(train) + len(val) < len(dataset.train)  # the gap frames are in neither part
    for fruit in dataset.class_names:  # every recording of every class gives validation frames
        recordings = {recording_of(f)[0] for f in dataset.train.files if f.startswith(fruit + "/")}
        assert {recording_of(f)[0] for f in val.files if f.startswith(fruit + "/")} == recordings
    with pytest.raises(ValueError, match="between 0 and 1"):
        frame_range_split(dataset.train.y, list(dataset.train.files), 0.0, seed=0)


def test_a_recording_too_short_for_the_gap_keeps_its_other_frames_for_training():
    files = [f"{i}_100.jpg" for i in range(6)]
    train_idx, val_idx, out_idx = frame_range_split(np.zeros(6, dtype=int), files, 0.2, seed=0, gap=10)
    assert len(val_idx) == 1 and len(train_idx) == 5 and len(out_idx) == 0
