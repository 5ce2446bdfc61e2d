"""Near-duplicate images across a train/validation split, by perceptual hash.

A validation image that is a resized, re-encoded or slightly edited copy of a training image
measures memory, not generalisation. The difference hash (dHash: a 9x8 grey thumbnail, one bit
per horizontal neighbour comparison) is stable under resizing, JPEG re-encoding and small
brightness changes; two images whose 64-bit hashes differ in at most a few bits look alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


def dhash(images: np.ndarray) -> np.ndarray:
    """64-bit difference hashes (uint64, one per image) of uint8 images (N, H, W, C)."""
    hashes = np.zeros(len(images), dtype=np.uint64)
    for i, image in enumerate(images):
        grey = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).convert("L")
        small = np.asarray(grey.resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
        bits = (small[:, 1:] > small[:, :-1]).ravel()
        hashes[i] = np.packbits(bits).view(">u8")[0]
    return hashes


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise bit distances (len(a), len(b)) between two arrays of uint64 hashes."""
    xor = a[:, None] ^ b[None, :]
    return np.unpackbits(xor.view(np.uint8).reshape(*xor.shape, 8), axis=-1).sum(axis=-1)


@dataclass(frozen=True)
class NearDuplicate:
    train: int  # index into the training part
    validation: int  # index into the validation part
    distance: int  # differing bits out of 64


def near_duplicates(train: np.ndarray, validation: np.ndarray, max_distance: int = 4) -> list[NearDuplicate]:
    """Pairs (training image, validation image) whose hashes differ in at most `max_distance` bits."""
    a, b = dhash(train), dhash(validation)
    found = []
    for start in range(0, len(a), 512):  # bounded memory: 512 x len(b) distances at a time
        block = hamming(a[start : start + 512], b)
        for i, j in zip(*np.nonzero(block <= max_distance), strict=True):
            found.append(NearDuplicate(int(start + i), int(j), int(block[i, j])))
    return sorted(found, key=lambda d: (d.distance, d.train, d.validation))
