"""Untrusted bytes or pixel lists -> one model input array, or a domain error saying what is wrong.

Decoding happens in two steps so callers can check the cheap part first: `open_image` reads the
header only (format, size) and refuses unsupported formats and decompression bombs before a
single pixel is decoded; `image_to_input` decodes the first frame and applies the preprocessing
training used (`modelcard.image_to_array`).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from modelcard import InputSpec, image_to_array
from service.errors import ImageTooLarge, InvalidImage, InvalidInput, UnsupportedFormat

# Common formats with decoders built into Pillow. JPEG covers MPO (multi-picture camera files).
# Others Pillow can read (EPS runs Ghostscript, PSD, ICNS, FITS, ...) are refused with 415.
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "AVIF", "PPM")

# Formats Pillow does not identify at all but a client may well send: 415, not "not an image".
_KNOWN_SIGNATURES = (
    (b"%PDF", "PDF"),
    (b"<svg", "SVG"),
    (b"<?xml", "SVG/XML"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1")


def _sniff_other_format(data: bytes) -> str | None:
    head = data[:512].lstrip()
    for signature, name in _KNOWN_SIGNATURES:
        if head.startswith(signature):
            return name
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "HEIF"
    return None


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Identify an image from its header and check its size, without decoding pixels.

    Raises:
        InvalidImage: empty, or not an image.
        UnsupportedFormat: an image or document format this service does not decode.
        ImageTooLarge: width * height above `max_pixels`.
    """
    if not data:
        raise InvalidImage("empty file")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"image too large: {error}") from None
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except Exception:  # a malformed header can raise nearly anything from a plugin's parser
        raise InvalidImage("corrupt image header") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    return image


def _unidentified(data: bytes) -> InvalidImage | UnsupportedFormat:
    other = _sniff_other_format(data)
    if other is None:
        try:
            with Image.open(io.BytesIO(data)) as image:  # any plugin: header only, nothing decoded
                other = image.format
        except Exception:
            other = None
    if other is not None:
        allowed = ", ".join(ALLOWED_FORMATS)
        return UnsupportedFormat(f"unsupported image format {other}; send one of {allowed}")
    return InvalidImage("not an image (or not one this service recognises)")


def image_to_input(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """Decode the first frame of an opened image and preprocess it for a model.

    Returns:
        uint8 array of shape `spec.shape`.

    Raises:
        InvalidImage: the pixel data is truncated or corrupt.
    """
    try:
        image.seek(0)
        image.load()
        return image_to_array(image, spec)
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"image too large: {error}") from None
    except Exception:  # decoders report bad data with OSError, SyntaxError, ValueError, struct.error, ...
        raise InvalidImage("could not decode the image: truncated, corrupt, or an unconvertible variant") from None
    finally:
        image.close()


def decode_image(data: bytes, spec: InputSpec, max_pixels: int) -> np.ndarray:
    """`open_image` then `image_to_input`: image file bytes -> uint8 `spec.shape` array."""
    return image_to_input(open_image(data, max_pixels), spec)


def pixels_to_input(values: Any, spec: InputSpec) -> np.ndarray:
    """A JSON pixel array (nested lists) -> float32 array of shape `spec.shape`.

    Accepts `(height, width, channels)`, and `(height, width)` for one-channel models. Values
    are raw pixels: finite and within the spec's value range (the model rescales them).

    Raises:
        InvalidInput: not numbers, ragged, wrong shape, NaN/inf or out of range.
    """
    try:
        raw = np.asarray(values)
    except (ValueError, OverflowError):
        raise InvalidInput("pixel array is ragged or not numeric") from None
    if raw.dtype.kind not in "iuf":
        raise InvalidInput("pixel array must hold numbers only")
    expected = spec.shape
    if raw.shape != expected and not (spec.channels == 1 and raw.shape == expected[:2]):
        accepted = f"{list(expected)}" + (f" or {list(expected[:2])}" if spec.channels == 1 else "")
        raise InvalidInput(f"pixel array has shape {list(raw.shape)}; this model takes {accepted}")
    if not np.isfinite(raw).all():
        raise InvalidInput("pixel array contains NaN or infinity")
    low, high = spec.value_range
    if raw.min() < low or raw.max() > high:
        raise InvalidInput(f"pixel values must be within [{low:g}, {high:g}]")
    return raw.astype(np.float32).reshape(expected)
