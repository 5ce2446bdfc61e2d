"""Tiny datasets written in each original on-disk format, in temporary folders."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image


def _digit_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 images whose label is readable from the image: a bar at row 2*label."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 30, size=(n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 * label + 4 : 2 * label + 6, 4:24] = 255
    return images, labels.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def mnist_npz(tmp_path: Path) -> Path:
    """keras-style mnist.npz with train and test arrays."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    x, y = _digit_images(60)
    xt, yt = _digit_images(20, seed=1)
    np.savez_compressed(folder / "mnist.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    return folder


@pytest.fixture
def mnist_idx(tmp_path: Path) -> Path:
    """The four official IDX files, gzipped."""
    folder = tmp_path / "mnist-idx"
    folder.mkdir()
    x, y = _digit_images(40)
    xt, yt = _digit_images(10, seed=1)
    write_idx(folder / "train-images-idx3-ubyte.gz", x)
    write_idx(folder / "train-labels-idx1-ubyte.gz", y)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", xt)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", yt)
    return folder


def _coloured_jpegs(folder: Path, colour: tuple[int, int, int], n: int, size=(100, 100), prefix: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(colour))
    for i in range(n):
        noise = rng.integers(-20, 20, size=(size[1], size[0], 3))
        pixels = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{prefix}{i}.jpg", quality=90)


FRUIT_COLOURS = {"Apple Red 1": (200, 30, 30), "Banana": (230, 220, 40), "Kiwi": (90, 140, 40)}


@pytest.fixture
def fruits_tree(tmp_path: Path) -> Path:
    root = tmp_path / "fruits-360"
    for name, colour in FRUIT_COLOURS.items():
        _coloured_jpegs(root / "Training" / name, colour, 6, prefix=f"{name[:2]}_")
        _coloured_jpegs(root / "Test" / name, colour, 2, prefix=f"t{name[:2]}_")
    return root


@pytest.fixture
def signs_h5(tmp_path: Path) -> Path:
    """train_signs.h5 / test_signs.h5, sorted by class like the original."""
    folder = tmp_path / "signs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", 5), ("test", 2)):
        y = np.repeat(np.arange(6), per_class)
        x = rng.integers(0, 40, (len(y), 64, 64, 3), dtype=np.uint8)  # no two alike: no copies to group
        for i, label in enumerate(y):
            x[i, :, : 10 * (label + 1)] += 160
        with h5py.File(folder / f"{prefix}_signs.h5", "w") as h5:
            h5[f"{prefix}_set_x"] = x
            h5[f"{prefix}_set_y"] = y.astype(np.int64)
            h5["list_classes"] = np.arange(6, dtype=np.int64)
    return folder


@pytest.fixture
def catsdogs_folders(tmp_path: Path) -> Path:
    root = tmp_path / "catsdogs"
    _coloured_jpegs(root / "train" / "cats", (40, 40, 40), 6, size=(120, 90), prefix="cat.")
    _coloured_jpegs(root / "train" / "dogs", (220, 200, 180), 6, size=(90, 140), prefix="dog.")
    _coloured_jpegs(root / "validation" / "cats", (40, 40, 40), 2, size=(80, 80), prefix="cat.10")
    _coloured_jpegs(root / "validation" / "dogs", (220, 200, 180), 2, size=(80, 80), prefix="dog.10")
    return root


@pytest.fixture
def catsdogs_flat(tmp_path: Path) -> Path:
    """Kaggle's layout: train/cat.N.jpg and train/dog.N.jpg side by side."""
    root = tmp_path / "kaggle"
    _coloured_jpegs(root / "train", (40, 40, 40), 4, size=(100, 75), prefix="cat.")
    _coloured_jpegs(root / "train", (220, 200, 180), 5, size=(75, 100), prefix="dog.")
    return root


@pytest.fixture
def fruits_recordings(tmp_path: Path) -> Path:
    """A Fruits-360 folder as the dataset names its files: `<frame>_100.jpg` for the first
    recording of a fruit, `r_<frame>_100.jpg`, `r2_<frame>_100.jpg` for further ones; one
    class has a single recording. Each recording has its own shade, as its light differs."""
    root = tmp_path / "fruits-360" / "Training"
    layout = {
        "Apple Red 1": {"": range(0, 40, 3), "r_": range(5, 60, 4), "r2_": range(100, 130, 5)},
        "Banana": {"": range(10, 70, 5), "r_": range(0, 30, 2)},
        "Kiwi": {"": range(0, 300, 20)},
    }
    for (name, recordings), colour in zip(layout.items(), FRUIT_COLOURS.values(), strict=True):
        folder = root / name
        folder.mkdir(parents=True)
        for shade, (prefix, frames) in enumerate(recordings.items()):
            pixels = np.clip(np.array(colour) + 15 * shade, 0, 255).astype(np.uint8)
            for frame in frames:
                Image.fromarray(np.broadcast_to(pixels, (100, 100, 3)).copy()).save(folder / f"{prefix}{frame}_100.jpg")
    return root.parent
