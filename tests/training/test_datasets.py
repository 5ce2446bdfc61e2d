from __future__ import annotations

import gzip
from pathlib import Path

import h5py
import numpy as np
import pytest

from training.architectures import GREY28, RGB32, RGB64, RGB100
from training.datasets import (
    DatasetError,
    duplicate_groups,
    load_catsdogs,
    load_fruits,
    load_mnist,
    load_signs,
    read_idx,
    stratified_split,
)

from .conftest import FRUIT_COLOURS, write_idx


def test_mnist_npz_has_train_and_test(mnist_npz: Path):
    data = load_mnist(mnist_npz, GREY28)
    assert data.train.x.shape == (60, 28, 28, 1) and data.train.x.dtype == np.uint8
    assert data.train.y.dtype == np.int64 and set(data.train.y) == set(range(10))
    assert data.test is not None and data.test.x.shape == (20, 28, 28, 1)
    assert data.class_names == [str(d) for d in range(10)]
    # the bar drawn for label k sits at row 2k+4: the loader kept images and labels paired
    for image, label in zip(data.train.x[:10, :, :, 0], data.train.y[:10], strict=True):
        assert image[2 * label + 4, 10] == 255


def test_mnist_split_files(tmp_path: Path, mnist_npz: Path):
    with np.load(mnist_npz / "mnist.npz") as full:
        folder = tmp_path / "split"
        folder.mkdir()
        np.savez(folder / "mnist_train.npz", x_train=full["x_train"], y_train=full["y_train"])
        np.savez(folder / "mnist_test.npz", x_test=full["x_test"], y_test=full["y_test"])
    data = load_mnist(folder, GREY28)
    assert len(data.train) == 60 and data.test is not None and len(data.test) == 20


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_gzipped_or_not(tmp_path: Path, mnist_idx: Path, gz: bool):
    if not gz:  # the same files, uncompressed, with the dotted names some mirrors use
        folder = tmp_path / "raw"
        folder.mkdir()
        for f in mnist_idx.iterdir():
            name = f.name.removesuffix(".gz").replace("-idx", ".idx")
            (folder / name).write_bytes(gzip.decompress(f.read_bytes()))
        mnist_idx = folder
    data = load_mnist(mnist_idx, GREY28)
    assert data.train.x.shape == (40, 28, 28, 1)
    assert data.test is not None and len(data.test) == 10
    assert list(data.train.y[:10]) == list(range(10))


def test_idx_bad_magic_names_file_and_bytes(tmp_path: Path):
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x56\x78" + b"\x00" * 32)
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.*magic.*12345678"):
        read_idx(bad)


def test_idx_truncated(tmp_path: Path):
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((5, 28, 28), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="promises shape"):
        read_idx(path)


def test_idx_named_gz_but_already_unpacked_is_read(tmp_path: Path):
    # a browser may unpack a .gz download and keep its name
    path = write_idx(tmp_path / "x-idx3-ubyte", np.full((3, 28, 28), 7, np.uint8), gz=False)
    unpacked = path.rename(tmp_path / "x-idx3-ubyte.gz")
    assert read_idx(unpacked).shape == (3, 28, 28) and read_idx(unpacked).max() == 7


def test_idx_with_corrupt_compressed_data_is_a_dataset_error(tmp_path: Path):
    path = write_idx(tmp_path / "x-idx3-ubyte.gz", np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28), gz=True)
    data = bytearray(path.read_bytes())
    data[12:40] = bytes(range(28))  # the deflate stream, not the header or its CRC
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="x-idx3-ubyte.gz"):
        read_idx(path)


def test_a_truncated_npz_is_a_dataset_error(tmp_path: Path, mnist_npz: Path):
    folder = tmp_path / "cut"
    folder.mkdir()
    (folder / "mnist_train.npz").write_bytes((mnist_npz / "mnist.npz").read_bytes()[:-200])
    with pytest.raises(DatasetError, match=r"mnist_train.npz: expected a numpy .npz archive"):
        load_mnist(folder, GREY28)


def test_mnist_from_a_path_that_does_not_exist(tmp_path: Path, mnist_npz: Path):
    # not the folder around it: that silently evaluated on the parent's mnist.npz
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_mnist(mnist_npz / "no-such-folder", GREY28)


def test_mnist_empty_folder(tmp_path: Path):
    with pytest.raises(DatasetError, match=r"expected MNIST.*found an empty folder"):
        load_mnist(tmp_path, GREY28)


def test_fruits_classes_from_folders(fruits_tree: Path):
    data = load_fruits(fruits_tree, RGB100)
    assert data.class_names == sorted(FRUIT_COLOURS)
    assert data.train.x.shape == (18, 100, 100, 3)
    assert data.test is not None and len(data.test) == 6
    # mean colour of each image matches its class folder's colour
    for image, label in zip(data.train.x, data.train.y, strict=True):
        colour = np.array(FRUIT_COLOURS[data.class_names[label]])
        assert np.abs(image.reshape(-1, 3).mean(0) - colour).max() < 15


def test_fruits_missing_training_folder(tmp_path: Path):
    (tmp_path / "something").mkdir()
    with pytest.raises(DatasetError, match=r"Training/<class>.*something/"):
        load_fruits(tmp_path, RGB100)


def test_fruits_empty_class_folder(fruits_tree: Path):
    (fruits_tree / "Training" / "Empty Fruit").mkdir()
    with pytest.raises(DatasetError, match="Empty Fruit"):
        load_fruits(fruits_tree, RGB100)


def test_unreadable_jpeg_names_the_file(fruits_tree: Path):
    broken = fruits_tree / "Training" / "Kiwi" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(DatasetError, match=r"broken\.jpg.*readable image"):
        load_fruits(fruits_tree, RGB100)


def test_signs_h5(signs_h5: Path):
    data = load_signs(signs_h5, RGB64)
    assert data.train.x.shape == (30, 64, 64, 3) and data.train.x.dtype == np.uint8
    assert data.class_names == [str(i) for i in range(6)]
    assert data.test is not None and len(data.test) == 12
    # class k has 10*(k+1) bright columns (on faint noise)
    for image, label in zip(data.train.x, data.train.y, strict=True):
        assert (image[0, :, 0] >= 160).sum() == 10 * (label + 1)


def test_signs_h5_without_the_keys(tmp_path: Path):
    with h5py.File(tmp_path / "train_signs.h5", "w") as h5:
        h5["images"] = np.zeros((2, 64, 64, 3), np.uint8)
    with pytest.raises(DatasetError, match=r"train_set_x.*found keys \['images'\]"):
        load_signs(tmp_path, RGB64)


def test_signs_not_hdf5(tmp_path: Path):
    (tmp_path / "train_signs.h5").write_text("<html>not a dataset</html>")
    with pytest.raises(DatasetError, match="expected an HDF5 file"):
        load_signs(tmp_path, RGB64)


def test_catsdogs_folder_layout(catsdogs_folders: Path):
    data = load_catsdogs(catsdogs_folders, RGB32)
    assert data.class_names == ["cats", "dogs"]
    assert data.train.x.shape == (12, 32, 32, 3)
    assert list(np.bincount(data.train.y)) == [6, 6]
    assert data.test is not None and len(data.test) == 4
    dark = data.train.x.reshape(12, -1).mean(1) < 100
    assert list(dark) == list(data.train.y == 0)


def test_catsdogs_kaggle_flat_layout(catsdogs_flat: Path):
    data = load_catsdogs(catsdogs_flat, RGB32)
    assert data.format.startswith("Kaggle")
    assert list(np.bincount(data.train.y)) == [4, 5]
    assert data.class_names == ["cats", "dogs"]


def test_catsdogs_nothing_there(tmp_path: Path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "readme.txt").write_text("hi")
    with pytest.raises(DatasetError, match=r"train/cats/.*found a folder holding readme\.txt|train/cats/.*found"):
        load_catsdogs(tmp_path, RGB32)


def test_stratified_split_is_shuffled_and_covers_every_class():
    labels = np.repeat(np.arange(6), 20)  # sorted by class, like the SIGNS file
    train, val = stratified_split(labels, 0.2, seed=7)
    assert sorted(np.concatenate([train, val])) == list(range(120))
    assert list(np.bincount(labels[val])) == [4] * 6
    assert not np.all(np.diff(val) > 0), "validation indices should be shuffled"
    again_train, again_val = stratified_split(labels, 0.2, seed=7)
    assert list(val) == list(again_val) and list(train) == list(again_train)
    other_train, other_val = stratified_split(labels, 0.2, seed=8)
    assert set(other_val) != set(val)


def test_the_copies_of_an_image_land_on_one_side_of_a_grouped_split():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (120, 28, 28, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(6), 20)
    # no copies: exactly the stratified split
    plain = stratified_split(labels, 0.2, 7)
    grouped = stratified_split(labels, 0.2, 7, duplicate_groups(images, labels))
    assert all(list(a) == list(b) for a, b in zip(plain, grouped, strict=True))
    # copies, as the SIGNS file has (43 pairs): in every class, 5 images repeated once each
    for k in range(5):
        images[[c * 20 + 10 + k for c in range(6)]] = images[[c * 20 + k for c in range(6)]]
    groups = duplicate_groups(images, labels)
    assert len(set(groups.tolist())) == 90
    train, val = stratified_split(labels, 0.2, 7, groups)
    assert sorted(np.concatenate([train, val])) == list(range(120))
    assert not set(groups[train].tolist()) & set(groups[val].tolist())
    assert all(3 <= n <= 5 for n in np.bincount(labels[val]))  # about a fifth of each class still
    # a group larger than the class's share stays out of validation, whichever seed
    images[:9] = images[0]  # class 0: one picture 14 times (9 here, and the copies of 0-4 above)
    for seed in range(5):
        train, val = stratified_split(labels, 0.2, seed, duplicate_groups(images, labels))
        assert np.bincount(labels[val], minlength=6)[0] <= 4 and set(range(9)) <= set(train.tolist())
    # a class whose images are all one picture is trained on, not validated on
    images[:20] = images[0]
    train, val = stratified_split(labels, 0.2, 7, duplicate_groups(images, labels))
    assert 0 not in set(labels[val].tolist()) and set(range(20)) <= set(train.tolist())


def test_photos_alike_by_their_hash_are_grouped_small_digits_only_when_identical():
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    brighter = np.clip(photo.astype(np.int16) + 3, 0, 255).astype(np.uint8)  # another encoding of it
    other = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    groups = duplicate_groups(np.stack([photo, brighter, other]), np.zeros(3, np.int64))
    assert groups[0] == groups[1] != groups[2]
    # the same two in different classes are not copies of one another for the split
    assert len(set(duplicate_groups(np.stack([photo, brighter]), np.array([0, 1])).tolist())) == 2
    # 28x28: thousands of different MNIST digits share a hash; only identical pixels count
    digit = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
    nudged = digit.copy()
    nudged[0, 0] ^= 1
    assert len(set(duplicate_groups(np.stack([digit, nudged, digit]), np.zeros(3, np.int64)).tolist())) == 2
