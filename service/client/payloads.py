"""Turning the images a caller hands over into one request body.

Files (paths, bytes, PIL images, uint8 arrays encoded as PNG) travel as multipart `file`
parts, exactly as stored; float arrays travel as JSON `instances` pixel arrays in the
model's input shape (TF Serving style). One request holds one kind: the service reads a
body as either form.
"""

from __future__ import annotations

import io
import mimetypes
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray
"""One image: a file path, the bytes of an image file, a PIL image, or a numpy array."""


@dataclass(frozen=True)
class Body:
    """One request body carrying a batch of images: multipart bytes, or JSON instances."""

    content: bytes | None = None
    content_type: str | None = None
    json: dict[str, Any] | None = None

    def request_kwargs(self) -> dict[str, Any]:
        if self.content is not None:
            return {"content": self.content, "headers": {"Content-Type": self.content_type}}
        return {"json": self.json}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # speed over size: it only crosses loopback/LAN
    return buffer.getvalue()


def _uint8_to_png(array: np.ndarray) -> bytes:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"a uint8 image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape {array.shape}")
    return _png(Image.fromarray(np.ascontiguousarray(array)))


def _is_single(images: object) -> bool:
    if isinstance(images, np.ndarray):
        return images.ndim <= 3
    return isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image))


def as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """A batch as a list: one image becomes a batch of one; a 4-D array is split on axis 0."""
    if _is_single(images):
        return [images]  # type: ignore[list-item]
    if isinstance(images, np.ndarray):
        return list(images)
    return list(images)  # type: ignore[arg-type]


def _is_pixels(item: object) -> bool:
    return isinstance(item, np.ndarray) and item.dtype.kind == "f"


def _file_part(item: ImageInput, position: int) -> tuple[str, bytes, str]:
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return path.name, path.read_bytes(), content_type
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"image{position}", bytes(item), "application/octet-stream"
    if isinstance(item, Image.Image):
        return f"image{position}.png", _png(item), "image/png"
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8 (encoded as PNG) or float (pixel values); got {item.dtype}")
        return f"image{position}.png", _uint8_to_png(item), "image/png"
    raise TypeError(f"cannot send {type(item).__name__} as an image: pass a path, bytes, a PIL image or an array")


def build_body(images: ImageInput | Sequence[ImageInput]) -> Body:
    """The request body for a batch of images.

    Args:
        images: one image or a sequence of images (paths, bytes, PIL images, uint8 arrays,
            or float arrays in the model's input shape; a 4-D array is a batch).

    Returns:
        A `Body`: multipart `file` parts, or JSON `instances` when every image is a float array.

    Raises:
        ValueError: on an empty batch, or float arrays mixed with other kinds of image.
        TypeError: on something that is not an image.
        OSError: when a path cannot be read.
    """
    items = as_list(images)
    if not items:
        raise ValueError("no images to send")
    pixels = [_is_pixels(item) for item in items]
    if all(pixels):
        instances = []
        for item in items:
            array = np.asarray(item, dtype=np.float32)
            instances.append(array.tolist())
        return Body(json={"instances": instances})
    if any(pixels):
        raise ValueError("float pixel arrays cannot share a request with image files; send them separately")
    return multipart([_file_part(item, i) for i, item in enumerate(items)])


def multipart(parts: Sequence[tuple[str, bytes, str]]) -> Body:
    """A multipart/form-data body with one `file` part per (filename, data, content type).

    Built as one bytes object: httpx's own encoder writes each part separately, hundreds of
    small socket writes for a batch of small images.
    """
    boundary = uuid.uuid4().hex
    chunks = []
    for name, data, content_type in parts:
        safe = name.replace("\\", "_").replace('"', "%22").replace("\r", "").replace("\n", "")
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{safe}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
        )
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return Body(content=b"".join(chunks), content_type=f"multipart/form-data; boundary={boundary}")
