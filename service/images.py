"""Untrusted bytes or pixel lists -> one model input array, or a domain error saying what is wrong.

Decoding happens in two steps so callers can check the cheap part first: `open_image` reads the
header only (format, size) and refuses unsupported formats and decompression bombs before a
single pixel is decoded; `image_to_input` decodes the first frame and applies the preprocessing
training used (`modelcard.image_to_array`).
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from modelcard import InputSpec, exif_orientation, image_to_array
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

# What Pillow's parsers and decoders raise on a bad file (OSError covers UnidentifiedImageError,
# truncation and "broken data stream"; zlib.error is a PNG's compressed stream gone bad). Anything
# else is a bug on our side: a 500 with a logged traceback, not the client's 400.
BAD_FILE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


def _sniff_other_format(data: bytes) -> str | None:
    head = data[:512].lstrip()
    for signature, name in _KNOWN_SIGNATURES:
        if head.startswith(signature):
            return name
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "HEIF"
    return None


def open_image(data: bytes, max_pixels: int, max_aspect_ratio: float | None = None) -> Image.Image:
    """Identify an image from its header and check its size, without decoding pixels.

    Raises:
        InvalidImage: empty, or not an image.
        UnsupportedFormat: an image or document format this service does not decode.
        ImageTooLarge: width * height above `max_pixels`.
        InvalidInput: one side more than `max_aspect_ratio` times the other (a 1 x 40,000,000
            strip costs as much to decode as a 6,000 x 6,000 photo and says nothing a model can read).
    """
    if not data:
        raise InvalidImage("empty file")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"image too large: {error}") from None
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except BAD_FILE_ERRORS:
        raise InvalidImage("corrupt image header") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if max_aspect_ratio is not None and max(width, height) > max_aspect_ratio * min(width, height):
        raise InvalidInput(
            f"image is {width}x{height}, one side more than {max_aspect_ratio:g} times the other; "
            "crop or pad it closer to the model's shape"
        )
    return image


def _unidentified(data: bytes) -> InvalidImage | UnsupportedFormat:
    other = _sniff_other_format(data)
    allowed = ", ".join(ALLOWED_FORMATS)
    if other is None:
        try:
            with Image.open(io.BytesIO(data)) as image:  # any plugin: header only, nothing decoded
                other = image.format
        except Image.DecompressionBombError:  # a plugin read its header: an image, and a huge one
            return UnsupportedFormat(f"unsupported image format (declaring a huge size); send one of {allowed}")
        except BAD_FILE_ERRORS:
            other = None
    if other is not None:
        return UnsupportedFormat(f"unsupported image format {other}; send one of {allowed}")
    return InvalidImage("not an image (or not one this service recognises)")


def image_to_input(image: Image.Image, spec: InputSpec, max_decode_bytes: int | None = None) -> np.ndarray:
    """Decode the first frame of an opened image and preprocess it for a model.

    Images up to `REDUCE_ABOVE_PIXELS` go through exactly the preprocessing training used. Larger
    ones are first shrunk (JPEG DCT scaling, then area averaging: `shrink_for_decoding`) so that the memory and CPU
    they cost follow the model's input size rather than the upload's: the result differs from
    resizing the full image in one step by at most 3 grey levels, 0.3 on average (see the tests).

    Args:
        image: from `open_image`; closed on return.
        spec: the model's input spec.
        max_decode_bytes: most memory the decoded pixels may take (after JPEG draft scaling).

    Returns:
        uint8 array of shape `spec.shape`.

    Raises:
        InvalidImage: the pixel data is truncated or corrupt.
        ImageTooLarge: decoding would take more than `max_decode_bytes`.
    """
    try:
        try:
            image.seek(0)
            _draft(image, spec)
            needed = decode_bytes(image)
            if max_decode_bytes is not None and needed > max_decode_bytes:
                width, height = image.size
                raise ImageTooLarge(
                    f"decoding this {width}x{height} {image.mode} image takes about {needed:,} bytes; "
                    f"the limit is {max_decode_bytes:,}"
                )
            try:
                image.load()
            except TypeError:  # Pillow 13's TIFF loader, on a strip offset that is not an integer
                raise InvalidImage("could not decode the image: truncated or corrupt") from None
        except Image.DecompressionBombError as error:
            raise ImageTooLarge(f"image too large: {error}") from None
        except BAD_FILE_ERRORS:
            raise InvalidImage("could not decode the image: truncated or corrupt") from None
        try:
            return image_to_array(shrink_for_decoding(image, spec), spec)
        except (OSError, ValueError):  # a mode or variant Pillow cannot convert
            raise InvalidImage("could not convert the image: an unconvertible mode or variant") from None
    finally:
        image.close()


# Training images are at most a few megapixels; above this, decoding cost is kept in
# proportion to the model's input (JPEG DCT scaling, then area averaging).
REDUCE_ABOVE_PIXELS = 4_000_000
# What shrinking leaves for the training resize to do: no less than this many times the
# model's input on each side (Pillow's own `reducing_gap` idea; measured on 6000x4000 images
# against the one-step resize: at most 3 grey levels apart, 0.3 on average).
REDUCING_GAP = 4


def _target(image: Image.Image, spec: InputSpec) -> tuple[int, int]:
    """The model's (width, height) in the image's stored orientation (EXIF turns some by 90 degrees)."""
    orientation = exif_orientation(image)
    return (spec.height, spec.width) if orientation in (5, 6, 7, 8) else (spec.width, spec.height)


def _draft(image: Image.Image, spec: InputSpec) -> None:
    width, height = image.size
    if image.format == "JPEG" and width * height > REDUCE_ABOVE_PIXELS:
        target_width, target_height = _target(image, spec)
        image.draft(image.mode, (target_width * REDUCING_GAP, target_height * REDUCING_GAP))


def decode_bytes(image: Image.Image) -> int:
    """Bytes the decoded pixels take, plus a same-size RGBA copy where shrinking needs one."""
    width, height = image.size
    pixels = width * height
    decoded = pixels * max(1, len(image.getbands())) * (4 if image.mode in ("I", "F", "I;16") else 1)
    if pixels > REDUCE_ABOVE_PIXELS and image.mode not in ("L", "RGB"):
        decoded += pixels * 4  # converted (RGBA, premultiplied) before reducing
    return decoded


def shrink_for_decoding(image: Image.Image, spec: InputSpec) -> Image.Image:
    """`image` area-averaged down to `REDUCING_GAP` times the model's input, when it is larger.

    Images up to `REDUCE_ABOVE_PIXELS` are returned as they are, so ordinary images get exactly
    the training preprocessing. Transparency is kept (Pillow resizes it premultiplied; flattening
    on white happens later, in `image_to_array`, as in training); palette and bilevel images are
    expanded first, since averaging palette indices means nothing.
    """
    width, height = image.size
    if width * height <= REDUCE_ABOVE_PIXELS:
        return image
    target_width, target_height = _target(image, spec)
    size = (min(width, target_width * REDUCING_GAP), min(height, target_height * REDUCING_GAP))
    if size == (width, height):
        return image
    if image.mode not in ("L", "RGB", "RGBA", "LA", "I", "F"):
        transparent = "transparency" in image.info or "A" in image.getbands()
        image = image.convert("RGBA" if transparent else ("L" if image.mode in ("1", "I;16") else "RGB"))
    orientation = exif_orientation(image)
    shrunk = image.resize(size, Image.Resampling.BOX)
    if orientation != 1:  # keep it for image_to_array (only it: the rest of the block may be damaged)
        exif = Image.Exif()
        exif[0x0112] = orientation
        shrunk.info["exif"] = exif.tobytes()
    return shrunk


def decode_image(
    data: bytes,
    spec: InputSpec,
    max_pixels: int,
    max_aspect_ratio: float | None = None,
    max_decode_bytes: int | None = None,
) -> np.ndarray:
    """`open_image` then `image_to_input`: image file bytes -> uint8 `spec.shape` array."""
    return image_to_input(open_image(data, max_pixels, max_aspect_ratio), spec, max_decode_bytes)


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
    check_pixel_values(raw, spec, "pixel array")
    return raw.astype(np.float32).reshape(expected)


def check_pixel_values(pixels: np.ndarray, spec: InputSpec, what: str) -> None:
    """Raw pixels a model may take (JSON arrays here, v2 tensors in `oip`): finite, and within
    the spec's value range (the model rescales them itself).

    Raises:
        InvalidInput: NaN/inf or out of range (a 400 on the protocol's routes).
    """
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise InvalidInput(f"{what} contains NaN or infinity")
    low, high = spec.value_range
    if pixels.min() < low or pixels.max() > high:
        raise InvalidInput(f"{what}: values must be within [{low:g}, {high:g}]")
