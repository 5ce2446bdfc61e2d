"""One loader per dataset, each reading the format its users download it in.

Every loader returns a `Dataset`: uint8 images (N, H, W, C) already in the model's input
size and colour mode, integer labels, the class names in label order, and the test part
when the download has one. Anything missing or malformed raises `DatasetError` with the
path, what was expected there and what was found.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from modelcard import InputSpec, image_to_array

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


class DatasetError(Exception):
    """A dataset is missing or malformed; the message says where and what."""


@dataclass
class Split:
    x: np.ndarray  # uint8, (N, H, W, C)
    y: np.ndarray  # int64, (N,)
    files: np.ndarray | None = None  # str (N,): each image's path relative to the dataset folder

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> Split:
        return Split(self.x[index], self.y[index], None if self.files is None else self.files[index])

    def counts(self, class_names: Sequence[str]) -> dict[str, int]:
        found = np.bincount(self.y, minlength=len(class_names))
        return {name: int(n) for name, n in zip(class_names, found, strict=True)}


@dataclass
class Dataset:
    train: Split
    class_names: list[str]
    format: str
    path: Path
    test: Split | None = None
    notes: list[str] = field(default_factory=list)


def _found(path: Path) -> str:
    """A short description of what is at `path`, for error messages."""
    if not path.exists():
        return "nothing (the path does not exist)"
    if path.is_file():
        return f"a file of {path.stat().st_size} bytes"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not entries:
        return "an empty folder"
    shown = ", ".join(entries[:8]) + (f", ... ({len(entries)} entries)" if len(entries) > 8 else "")
    return f"a folder holding {shown}"


# --------------------------------------------------------------------------- MNIST


_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (the original MNIST format), gzipped or not (by its content: a browser
    may have unpacked a `.gz` download and kept the name)."""
    try:
        with path.open("rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
        with (gzip.open if gzipped else open)(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: expected an IDX file, could not read it ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(
            f"{path}: expected an IDX file (magic number 0x000008NN), found magic bytes {data[:4].hex() or 'none'}"
        )
    ndim = data[3]
    header_end = 4 + 4 * ndim
    if ndim == 0 or len(data) < header_end:
        raise DatasetError(f"{path}: IDX header is truncated ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header_end != expected:
        raise DatasetError(
            f"{path}: IDX header promises shape {shape} ({expected} bytes of data), "
            f"found {len(data) - header_end} bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header_end).reshape(shape)


def _find_idx(folder: Path, split: str, kind: str) -> Path | None:
    # Official names use '-' (train-images-idx3-ubyte), some mirrors use '.' (train-images.idx3-ubyte).
    dims = "3" if kind == "images" else "1"
    for sep in ("-", "."):
        for suffix in (".gz", ""):
            candidate = folder / f"{split}-{kind}{sep}idx{dims}-ubyte{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _mnist_split(images: np.ndarray, labels: np.ndarray, where: str) -> Split:
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetError(f"{where}: expected images of shape (N, 28, 28), found {images.shape}")
    if labels.shape != (images.shape[0],):
        raise DatasetError(
            f"{where}: expected {images.shape[0]} labels to match the images, found shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{where}: expected labels 0-9, found {labels.min()}..{labels.max()}")
    return Split(images.astype(np.uint8)[..., None], labels.astype(np.int64))


@contextlib.contextmanager
def _open_npz(path: Path) -> Iterator[Any]:
    """An .npz archive open for reading; whatever fails while reading it is a `DatasetError`."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            yield archive
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetError(f"{path}: expected a numpy .npz archive, could not read it ({exc})") from None


def _read_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    with _open_npz(path) as archive:
        missing = [k for k in keys if k not in archive.files]
        if missing:
            raise DatasetError(f"{path}: expected arrays {list(keys)}, found {archive.files}")
        return {k: archive[k] for k in keys}


def _archive_files(path: Path) -> set[str]:
    with _open_npz(path) as archive:
        return set(archive.files)


def load_mnist(path: Path, spec: InputSpec | None = None) -> Dataset:
    """MNIST as keras' `mnist.npz`, split files `mnist_train.npz`/`mnist_test.npz`, or IDX files."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    folder = path if path.is_dir() else path.parent
    classes = [str(d) for d in range(10)]
    if path.is_file() and path.suffix == ".npz":
        npz_candidates = [path]
    else:
        npz_candidates = [folder / "mnist.npz", folder / "mnist_train.npz"]
    for candidate in npz_candidates:
        if not candidate.is_file():
            continue
        files = _archive_files(candidate)
        if {"x_train", "y_train"} <= files:
            arrays = _read_npz(candidate, ["x_train", "y_train"])
            train = _mnist_split(arrays["x_train"], arrays["y_train"], str(candidate))
            test = None
            if {"x_test", "y_test"} <= files:
                arrays = _read_npz(candidate, ["x_test", "y_test"])
                test = _mnist_split(arrays["x_test"], arrays["y_test"], str(candidate))
            elif (folder / "mnist_test.npz").is_file():
                arrays = _read_npz(folder / "mnist_test.npz", ["x_test", "y_test"])
                test = _mnist_split(arrays["x_test"], arrays["y_test"], str(folder / "mnist_test.npz"))
            return Dataset(train, classes, f"npz ({candidate.name})", path, test)
        raise DatasetError(f"{candidate}: expected arrays x_train and y_train, found {sorted(files)}")

    images = _find_idx(folder, "train", "images")
    labels = _find_idx(folder, "train", "labels")
    if images and labels:
        train = _mnist_split(read_idx(images), read_idx(labels), f"{images} + {labels.name}")
        test = None
        test_images, test_labels = _find_idx(folder, "t10k", "images"), _find_idx(folder, "t10k", "labels")
        if test_images and test_labels:
            test = _mnist_split(read_idx(test_images), read_idx(test_labels), str(test_images))
        return Dataset(train, classes, "idx" + (" (gzip)" if images.suffix == ".gz" else ""), path, test)
    raise DatasetError(
        f"{path}: expected MNIST as mnist.npz, mnist_train.npz, or the IDX files "
        f"train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz]; found {_found(path)}"
    )


# --------------------------------------------------------------------------- SIGNS


def load_signs(path: Path, spec: InputSpec | None = None) -> Dataset:
    """SIGNS hand signs as the course's `train_signs.h5` (+ optional `test_signs.h5`)."""
    import h5py

    path = Path(path)
    train_file = path if path.is_file() else path / "train_signs.h5"
    if not train_file.is_file():
        raise DatasetError(f"{path}: expected train_signs.h5 (and optionally test_signs.h5), found {_found(path)}")

    def read(file: Path, prefix: str) -> tuple[Split, list[str]]:
        try:
            with h5py.File(file, "r") as h5:
                keys = sorted(h5.keys())
                needed = [f"{prefix}_set_x", f"{prefix}_set_y"]
                if any(k not in h5 for k in needed):
                    raise DatasetError(f"{file}: expected datasets {needed} and list_classes, found keys {keys}")
                x = np.asarray(h5[needed[0]])
                y = np.asarray(h5[needed[1]]).reshape(-1)
                classes = np.asarray(h5["list_classes"]).reshape(-1) if "list_classes" in h5 else np.unique(y)
        except OSError as exc:
            raise DatasetError(f"{file}: expected an HDF5 file, could not open it ({exc})") from None
        if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] != y.shape[0]:
            raise DatasetError(f"{file}: expected images (N, H, W, 3) and N labels, found {x.shape} and {y.shape}")
        names = [str(c.decode() if isinstance(c, bytes) else c) for c in classes]
        index = {name: i for i, name in enumerate(names)}
        try:
            labels = np.array([index[str(v)] for v in y], dtype=np.int64)
        except KeyError as exc:
            raise DatasetError(f"{file}: label {exc} is not in list_classes {names}") from None
        if spec is not None and x.shape[1:3] != (spec.height, spec.width):
            x = np.stack([image_to_array(Image.fromarray(img.astype(np.uint8)), spec) for img in x])
        return Split(x.astype(np.uint8), labels), names

    train, names = read(train_file, "train")
    test = None
    test_file = train_file.with_name("test_signs.h5")
    if test_file.is_file():
        test, test_names = read(test_file, "test")
        if test_names != names:
            raise DatasetError(f"{test_file}: list_classes {test_names} differs from the training file's {names}")
    return Dataset(train, names, "h5", path, test)


# --------------------------------------------------------------------------- image folders


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def decode_images(files: Sequence[Path], spec: InputSpec, workers: int = 4) -> np.ndarray:
    """Decode image files into the model's input arrays with the shared preprocessing."""

    def one(file: Path) -> np.ndarray:
        try:
            with Image.open(file) as image:
                image.load()
                return image_to_array(image, spec)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(f"{file}: expected a readable image, could not decode it ({exc})") from None

    if not files:
        return np.zeros((0, *spec.shape), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow releases the GIL while decoding
        return np.stack(list(pool.map(one, files)))


def _class_folders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _folder_split(folder: Path, spec: InputSpec, class_names: list[str] | None = None) -> tuple[Split, list[str]]:
    """Read `folder/<class>/*.jpg`; with `class_names`, folders must be among them."""
    subfolders = _class_folders(folder)
    names = class_names or [p.name for p in subfolders]
    index = {name: i for i, name in enumerate(names)}
    files: list[Path] = []
    labels: list[int] = []
    for sub in subfolders:
        if sub.name not in index:
            raise DatasetError(f"{sub}: class folder {sub.name!r} is not among the training classes")
        images = sorted((p for p in sub.iterdir() if _is_image(p)), key=lambda p: p.name)
        files += images
        labels += [index[sub.name]] * len(images)
    empty = [p.name for p in subfolders if not any(_is_image(c) for c in p.iterdir())]
    if not files or (class_names is None and empty):
        what = f"class folders with no images: {empty}" if empty else _found(folder)
        raise DatasetError(f"{folder}: expected one folder of images per class, found {what}")
    relative = np.array([f"{p.parent.name}/{p.name}" for p in files])
    return Split(decode_images(files, spec), np.array(labels, dtype=np.int64), relative), names


def load_fruits(path: Path, spec: InputSpec) -> Dataset:
    """Fruits-360: `Training/<class>/*.jpg` and optionally `Test/<class>/*.jpg`."""
    path = Path(path)
    training = path / "Training"
    if not training.is_dir():
        raise DatasetError(f"{path}: expected the Fruits-360 folder with Training/<class>/*.jpg, found {_found(path)}")
    train, names = _folder_split(training, spec)
    test = None
    for test_name in ("Test", "Validation"):  # the 2018 release called its test split Validation
        if (path / test_name).is_dir():
            test, _ = _folder_split(path / test_name, spec, names)
            break
    return Dataset(train, names, "folder per class (Fruits-360)", path, test)


_KAGGLE_NAME = re.compile(r"^(cat|dog)\.\d+\.(jpe?g|png)$", re.IGNORECASE)
CATSDOGS_CLASSES = ["cats", "dogs"]


def _catsdogs_part(folder: Path, spec: InputSpec) -> tuple[Split, str] | None:
    """One part (train or validation) in either layout, or None if `folder` holds neither."""
    if not folder.is_dir():
        return None
    if all((folder / name).is_dir() for name in CATSDOGS_CLASSES):
        split, _ = _folder_split(folder, spec, CATSDOGS_CLASSES)
        return split, "folder per class"
    flat = sorted(p for p in folder.iterdir() if p.is_file() and _KAGGLE_NAME.match(p.name))
    if flat:
        labels = np.array([0 if p.name.lower().startswith("cat") else 1 for p in flat], dtype=np.int64)
        return Split(
            decode_images(flat, spec), labels, np.array([p.name for p in flat])
        ), "Kaggle flat (cat.N.jpg / dog.N.jpg)"
    return None


def load_catsdogs(path: Path, spec: InputSpec) -> Dataset:
    """Cats vs dogs: `train/{cats,dogs}` (+ `validation/...`), or Kaggle's flat `cat.N.jpg` files."""
    path = Path(path)
    for train_dir in (path / "train", path):
        found = _catsdogs_part(train_dir, spec)
        if found:
            train, layout = found
            test = None
            if train_dir != path:
                for name in ("validation", "test"):
                    part = _catsdogs_part(path / name, spec)
                    if part:
                        test = part[0]
                        break
            if len(np.unique(train.y)) < 2:
                raise DatasetError(
                    f"{train_dir}: expected images of both cats and dogs, found only {CATSDOGS_CLASSES[train.y[0]]}"
                )
            return Dataset(train, CATSDOGS_CLASSES, layout, path, test)
    raise DatasetError(
        f"{path}: expected train/cats/ and train/dogs/ (optionally validation/...), or Kaggle files "
        f"named cat.N.jpg / dog.N.jpg; found {_found(path)}"
    )


# --------------------------------------------------------------------------- splitting

Loader = Callable[[Path, InputSpec], Dataset]


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation): `fraction` of every class, shuffled with `seed`.

    Every class with at least two images keeps at least one in each part. With `groups` (an id
    per image, `duplicate_groups`), the images of a group go to one part together, in the order
    their first image was drawn: to validation while the whole group fits in the class's share,
    else to training, which always gets at least one group. So validation may hold a little less
    than the share, and a class of copies of one image none; without copies in a class of two
    or more images, it is the split without `groups`, image for image.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = int(round(len(idx) * fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        if groups is None:
            val_idx.append(idx[:n_val])
            train_idx.append(idx[n_val:])
            continue
        members: dict[int, list[int]] = {}
        for i in idx:
            members.setdefault(int(groups[i]), []).append(int(i))
        val: list[int] = []
        train: list[int] = []
        order = list(members)  # groups in the order their first image was drawn
        for k, group in enumerate(order):
            fits = len(val) + len(members[group]) <= n_val
            keep_one_for_training = k == len(order) - 1 and not train
            (val if fits and not keep_one_for_training else train).extend(members[group])
        val_idx.append(np.asarray(val, dtype=np.int64))
        train_idx.append(np.asarray(train, dtype=np.int64))
    return rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(val_idx))


# Photos at least this large on each side whose difference hashes are equal are taken for the
# same picture (a re-encoded or resized copy); smaller images, like MNIST's 28x28 digits, share
# hashes without being copies (thousands of different "1"s hash alike), so only identical pixels count.
NEAR_DUPLICATE_MIN_SIDE = 64


def duplicate_groups(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A group id per image: images of one class with identical pixels share one, and so do
    photos of `NEAR_DUPLICATE_MIN_SIDE` pixels or more whose dHash is equal (`duplicates.dhash`).
    Otherwise every image is its own group."""
    from training.duplicates import dhash

    parent = list(range(len(images)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    keys: list[list[tuple]] = [
        [(int(label), "pixels", hashlib.blake2b(image.tobytes(), digest_size=16).digest())]
        for image, label in zip(images, labels, strict=True)
    ]
    if len(images) and min(images.shape[1:3]) >= NEAR_DUPLICATE_MIN_SIDE:
        for image_keys, label, value in zip(keys, labels, dhash(images), strict=True):
            image_keys.append((int(label), "dhash", int(value)))
    first: dict[tuple, int] = {}
    for i, image_keys in enumerate(keys):
        for key in image_keys:
            parent[root(i)] = root(first.setdefault(key, i))
    return np.asarray([root(i) for i in range(len(images))], dtype=np.int64)


# Fruits-360 names each frame of a recording `<frame>_100.jpg`; further recordings of the same
# fruit carry a prefix (`r_`, `r2_`, `r3_`, ...): `r_12_100.jpg` is frame 12 of recording `r`.
_FRAME_NAME = re.compile(r"^(?P<recording>(?:[A-Za-z]+\d*_)*?)(?P<frame>\d+)(?:_\d+)?\.[A-Za-z]+$")


def recording_of(file_name: str) -> tuple[str, int]:
    """(recording, frame number) of a Fruits-360 file name, e.g. `r2_41_100.jpg` -> ("r2", 41).

    A name that does not follow the pattern is a recording of its own (frame 0)."""
    found = _FRAME_NAME.match(Path(file_name).name)
    if not found:
        return Path(file_name).name, 0
    return found["recording"].rstrip("_") or "main", int(found["frame"])


def _recordings_and_frames(labels: np.ndarray, files: Sequence[str], fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Each file's recording name and frame number, after checking the split's arguments."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be between 0 and 1, got {fraction}")
    if len(files) != len(labels):
        raise ValueError(f"{len(files)} file names for {len(labels)} labels")
    parsed = [recording_of(f) for f in files]
    return np.array([r for r, _ in parsed]), np.array([f for _, f in parsed])


def recording_split(
    labels: np.ndarray, files: Sequence[str], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation) such that no recording has frames on both sides.

    Neighbouring frames of one recording are near-identical, so a random split validates on
    images the model has practically seen. Per class: when it has several recordings, whole
    recordings (picked with `seed`) go to validation until they hold at least `fraction` of
    the class, always leaving one for training; a class with a single recording gives a
    contiguous range of frames instead, so that only the two ends of the range touch training.
    """
    recordings, frames = _recordings_and_frames(labels, files, fraction)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        names = sorted(set(recordings[members]))
        if len(names) >= 2:
            chosen: list[str] = []
            held = 0
            for name in rng.permutation(names):
                if held >= fraction * len(members) or len(chosen) == len(names) - 1:
                    break
                chosen.append(str(name))
                held += int((recordings[members] == name).sum())
            in_val = np.isin(recordings[members], chosen)
        else:
            order = members[np.argsort(frames[members], kind="stable")]
            n_val = min(max(int(round(len(order) * fraction)), 1), len(order) - 1) if len(order) >= 2 else 0
            start = int(rng.integers(0, len(order) - n_val + 1))
            in_val = np.isin(members, order[start : start + n_val])
        val_idx.append(members[in_val])
        train_idx.append(members[~in_val])
    return rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(val_idx))


FRAME_GAP = 10  # frame numbers left out on each side of a held-out range (about 10 degrees of rotation)


def frame_range_split(
    labels: np.ndarray, files: Sequence[str], fraction: float, seed: int, gap: int = FRAME_GAP
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, validation, left out): per recording, a contiguous range of frames.

    Each recording of each class gives validation one contiguous run of its frames, about
    `fraction` of them, starting at a frame picked with `seed`; frames whose number lies
    within `gap` of the run's first or last frame go to neither side. Frames are views of one
    fruit turning, so validation holds angles the model never saw and training holds no
    frame next to them. The run may wrap around the end of the recording (the fruit turns
    full circle), and the wrap-around neighbours are left out the same way. A recording too
    short to lose the gap and keep a training frame keeps them all."""
    recordings, frames = _recordings_and_frames(labels, files, fraction)
    rng = np.random.default_rng(seed)
    side = np.zeros(len(labels), dtype=np.int8)  # 0 train, 1 validation, 2 left out
    for cls in np.unique(labels):
        for name in sorted(set(recordings[labels == cls])):
            members = np.flatnonzero((labels == cls) & (recordings == name))
            order = members[np.argsort(frames[members], kind="stable")]
            n_val = int(round(len(order) * fraction))
            if len(order) < 3 or n_val == 0:
                continue  # too few frames to hold any out honestly: all train
            start = int(rng.integers(0, len(order)))
            held = order[(start + np.arange(n_val)) % len(order)]
            side[held] = 1
            low, high = frames[held[0]], frames[held[-1]]
            period = frames[order[-1]] + 1  # frame numbers of one turn run 0..period-1
            rest = order[side[order] != 1]
            near = np.array(
                [min(_circular(frames[i] - low, period), _circular(frames[i] - high, period)) <= gap for i in rest],
                dtype=bool,
            )
            if not near.all():  # a recording too short for the gap keeps its other frames for training
                side[rest[near]] = 2
    return (
        rng.permutation(np.flatnonzero(side == 0)),
        rng.permutation(np.flatnonzero(side == 1)),
        np.flatnonzero(side == 2),
    )


def _circular(difference: int, period: int) -> int:
    return int(min(difference % period, -difference % period))
