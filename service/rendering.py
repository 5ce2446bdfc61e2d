"""Arrays -> response bytes: JSON with base64 or list data, `.npz`, and PNG grids and overlays.

Pure numpy and Pillow; nothing here knows about models or HTTP. Large bodies are assembled
from pieces rather than through one `json.dumps` of nested lists: base64 strings are spliced in
as they are, and list data is encoded in slices, so no single call holds the GIL for seconds.

Conventions every PNG here follows:
- a grid has `columns = ceil(sqrt(count))` and `rows = ceil(count / columns)` tiles (32 maps:
  6 x 6, like the reference posts' figures), tiles in row-major order, 1 white pixel between
  tiles and white in unused cells;
- each tile is one feature map (or kernel) scaled to 0..255 on its own (min -> 0, max -> 255;
  a constant map is black), upscaled by an integer `scale` with nearest-neighbour;
- the default `scale` blows a tile up to about 48 px, keeping the whole grid within 2048 px.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

JSON = "application/json"
NPZ = "application/x-npz"
PNG = "image/png"

GAP = 1
_TILE_TARGET = 48
_GRID_MAX_SIDE = 2048
_OVERLAY_TARGET = 224
MAX_SCALE = 16
_LIST_SLICE = 65_536  # values per json.dumps call when encoding lists
_NPZ_OVERHEAD = 256  # zip entry and .npy header per array, roughly
_JSON_OVERHEAD = 160  # a layer entry's keys, name and shape


# ------------------------------------------------------------------ JSON arrays


def array_entry(array: np.ndarray, encoding: str, **fields: object) -> str:
    """One JSON object `{**fields, "shape", "dtype": "float32", "encoding", "data"}` as text.

    Args:
        array: any real array; sent as float32.
        encoding: "base64" (raw little-endian float32 bytes in C order) or "list" (nested
            lists; each value printed with the fewest digits that still read back as the
            same float32).
        fields: keys to put first (e.g. name, type).
    """
    values = np.ascontiguousarray(array, dtype="<f4")
    head = dict(fields, shape=list(values.shape), dtype="float32", encoding=encoding)
    if encoding == "base64":
        data = '"' + base64.b64encode(values.tobytes()).decode("ascii") + '"'
    elif encoding == "list":
        data = _list_text(exact_floats(values))
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    return _dumps(head)[:-1] + ',"data":' + data + "}"


def json_body(fields: dict, entries: Iterable[str], entries_key: str) -> bytes:
    """`fields` plus `entries_key: [entries...]` (entries already JSON text) as UTF-8 bytes."""
    return (_dumps(fields)[:-1] + f',"{entries_key}":[' + ",".join(entries) + "]}").encode()


def splice(fields: dict, **texts: str) -> bytes:
    """`fields` plus keys whose values are already JSON text, as UTF-8 bytes."""
    extra = "".join(f',"{key}":{text}' for key, text in texts.items())
    return (_dumps(fields)[:-1] + extra + "}").encode()


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def exact_floats(values: np.ndarray) -> np.ndarray:
    """float32 values as float64 values that print short and read back as the same float32.

    Each value gets the fewest significant digits (6 to 9) whose float64 converts back to the
    same float32; the rest (rare) keep the float32's exact value. A float32 printed as a
    Python float reads 0.10000000149011612; this prints 0.1.
    """
    values = np.asarray(values, np.float32)
    result = values.astype(np.float64)
    flat, targets = result.reshape(-1), values.reshape(-1)
    index = np.flatnonzero(np.isfinite(flat) & (flat != 0))  # the values still to shorten
    wide, target = flat[index], targets[index]
    magnitude = np.floor(np.log10(np.abs(wide))).astype(np.int64)
    for digits in (6, 7, 8, 9):
        if not index.size:
            break
        # multiply or divide by an exact power of ten (10**k, k <= 22), so the rounding happens once
        exponent = digits - 1 - magnitude
        up, down = _POWERS_OF_TEN[np.clip(exponent, 0, None)], _POWERS_OF_TEN[np.clip(-exponent, 0, None)]
        with np.errstate(over="ignore", invalid="ignore"):
            rounded = np.round(wide * up / down) / up * down
        ok = rounded.astype(np.float32) == target
        flat[index[ok]] = rounded[ok]
        index, wide, target, magnitude = index[~ok], wide[~ok], target[~ok], magnitude[~ok]
    return result


_POWERS_OF_TEN = 10.0 ** np.arange(64)  # float32 values need exponents up to 9 - 1 + 45


def short_float(value: float) -> float:
    """One float32 value as the shortest Python float that reads back as it (see `exact_floats`)."""
    return float(exact_floats(np.array([value], np.float32))[0])


def _list_text(values: np.ndarray) -> str:
    if values.ndim <= 1 or values.size <= _LIST_SLICE:
        return _dumps(values.tolist())
    return "[" + ",".join(_list_text(part) for part in values) + "]"


# ------------------------------------------------------------------ npz


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed `.npz`: one float32 array per key (activations compress poorly and slowly)."""
    buffer = io.BytesIO()
    float32: dict[str, Any] = {name: np.asarray(array, np.float32) for name, array in arrays.items()}
    np.savez(buffer, **float32)
    return buffer.getvalue()


# ------------------------------------------------------------------ size estimates


def estimated_bytes(values: int, arrays: int, format: str, encoding: str) -> int:
    """A lower bound on the response size for `values` float32s in `arrays` arrays.

    Exact up to headers for npz and base64; for lists it counts 4 bytes a value (`0.0,`), the
    least any value takes, so a request is refused early only when it is surely too large.
    """
    if format == "npz":
        return 4 * values + _NPZ_OVERHEAD * arrays
    if encoding == "base64":
        return 4 * math.ceil(4 * values / 3) + _JSON_OVERHEAD * arrays
    return 4 * values + _JSON_OVERHEAD * arrays


_LIST_SAMPLE = 4096


def list_text_bytes(array: np.ndarray) -> int:
    """About how many bytes `array` takes as JSON lists (`encoding=list`), without printing it all.

    Prints a fixed random sample of its values as `array_entry` would and scales the mean up,
    brackets and separators added: within a few percent for arrays of thousands of values, so
    an answer whose text would be over budget is refused before it is built.
    """
    values = np.asarray(array, np.float32).reshape(-1)
    if values.size == 0:
        return 2 * max(1, array.ndim) + _JSON_OVERHEAD
    if values.size > _LIST_SAMPLE:
        values = values[np.random.default_rng(0).integers(0, values.size, _LIST_SAMPLE)]
    per_value = (len(_dumps(exact_floats(values).tolist())) - 1) / values.size  # each value and its comma
    rows = array.size // max(1, array.shape[-1]) if array.ndim else 1
    return math.ceil(per_value * array.size) + 3 * rows + _JSON_OVERHEAD


# ------------------------------------------------------------------ PNG grids


@dataclass(frozen=True)
class Picture:
    """A rendered PNG and how it was laid out."""

    png: bytes
    width: int
    height: int
    rows: int = 1
    columns: int = 1
    scale: int = 1


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) for `count` tiles: as square as possible, filled row by row."""
    columns = max(1, math.ceil(math.sqrt(count)))
    return max(1, math.ceil(count / columns)), columns


def default_scale(tile: tuple[int, int], grid: tuple[int, int] = (1, 1)) -> int:
    """The integer upscale that brings a tile to about 48 px, keeping the grid within 2048 px."""
    side = max(tile)
    wanted = math.ceil(_TILE_TARGET / side)
    rows, columns = grid
    fits = min(
        (_GRID_MAX_SIDE - (rows - 1) * GAP) // max(1, rows * tile[0]),
        (_GRID_MAX_SIDE - (columns - 1) * GAP) // max(1, columns * tile[1]),
    )
    return max(1, min(MAX_SCALE, wanted, fits))


def grid_size(tile: tuple[int, int], count: int, scale: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid of `count` tiles of `tile` (height, width) at `scale`."""
    rows, columns = grid_shape(count)
    return columns * tile[1] * scale + (columns - 1) * GAP, rows * tile[0] * scale + (rows - 1) * GAP


def normalise(maps: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """`maps` scaled to 0..255 (uint8) separately over each slice along the axes not in `axes`."""
    maps = np.asarray(maps, np.float32)
    low = maps.min(axis=axes, keepdims=True)
    span = maps.max(axis=axes, keepdims=True) - low
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(span > 0, (maps - low) / np.where(span > 0, span, 1), 0.0)
    return np.round(scaled * 255).astype(np.uint8)


def tile_grid(tiles: np.ndarray, scale: int, rows: int | None = None, columns: int | None = None) -> Picture:
    """Tiles `(count, h, w)` (grey) or `(count, h, w, 3)` (RGB), uint8, into one PNG.

    `rows` and `columns` default to `grid_shape(count)`.
    """
    count, height, width = tiles.shape[:3]
    if rows is None or columns is None:
        rows, columns = grid_shape(count)
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    tile_h, tile_w = height * scale, width * scale
    canvas_shape = (rows * tile_h + (rows - 1) * GAP, columns * tile_w + (columns - 1) * GAP, *tiles.shape[3:])
    canvas = np.full(canvas_shape, 255, np.uint8)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * (tile_h + GAP), column * (tile_w + GAP)
        canvas[top : top + tile_h, left : left + tile_w] = tiles[index]
    return Picture(encode_png(canvas), canvas.shape[1], canvas.shape[0], rows, columns, scale)


def channel_grid(activation: np.ndarray, scale: int | None = None) -> Picture:
    """One image's feature maps `(height, width, channels)` as a grid, one normalised tile per channel."""
    height, width, channels = activation.shape
    scale = scale or default_scale((height, width), grid_shape(channels))
    tiles = normalise(np.moveaxis(activation, -1, 0), axes=(1, 2))
    return tile_grid(tiles, scale)


def kernel_tiles(kernel: np.ndarray) -> tuple[np.ndarray, int | None, int | None]:
    """A Conv2D kernel `(kh, kw, in, out)` as uint8 tiles, and the grid (rows, columns) if fixed.

    One input channel: a grey tile per filter. Three: an RGB tile per filter (how a first layer
    sees colour). Otherwise: one row per filter, one grey tile per input channel. Each filter
    is normalised on its own, over all its input channels.
    """
    kh, kw, inputs, outputs = kernel.shape
    per_filter = normalise(np.moveaxis(kernel, -1, 0), axes=(1, 2, 3))  # (out, kh, kw, in)
    if inputs == 1:
        return per_filter[..., 0], None, None
    if inputs == 3:
        return per_filter, None, None
    tiles = np.moveaxis(per_filter, -1, 1).reshape(outputs * inputs, kh, kw)
    return tiles, outputs, inputs


def kernel_grid(kernel: np.ndarray, scale: int | None = None) -> Picture:
    tiles, rows, columns = kernel_tiles(kernel)
    grid = (rows, columns) if rows is not None and columns is not None else grid_shape(len(tiles))
    scale = scale or default_scale(tiles.shape[1:3], grid)
    return tile_grid(tiles, scale, *grid)


def kernel_grid_pixels(kernel_shape: tuple[int, ...], scale: int | None) -> int:
    """Bytes of the uncompressed image `kernel_grid` would draw (to refuse it before drawing)."""
    kh, kw, inputs, outputs = kernel_shape
    grid = (outputs, inputs) if inputs not in (1, 3) else grid_shape(outputs)
    scale = scale or default_scale((kh, kw), grid)
    rows, columns = grid
    depth = 3 if inputs == 3 else 1
    return (columns * kw * scale + (columns - 1) * GAP) * (rows * kh * scale + (rows - 1) * GAP) * depth


# ------------------------------------------------------------------ Grad-CAM overlay


def jet(values: np.ndarray) -> np.ndarray:
    """The classic "jet" colormap: [0, 1] -> RGB uint8 (blue, cyan, yellow, red)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return np.round(rgb * 255).astype(np.uint8)


def overlay_scale(size: tuple[int, int]) -> int:
    """The default upscale of an overlay: about 224 px on the image's larger side."""
    return max(1, min(MAX_SCALE, math.ceil(_OVERLAY_TARGET / max(size))))


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray, scale: int | None = None, alpha: float = 0.4) -> Picture:
    """A heatmap in [0, 1] over an image, both upscaled to `scale` times the image size.

    Args:
        image: `(height, width, channels)` raw pixels in 0..255, 1 or 3 channels.
        heatmap: `(h, w)`, any resolution; resized smoothly (bilinear) to the output size.
        scale: integer upscale of the image; default: about 224 px on the larger side.
        alpha: the heatmap's weight in the blend.
    """
    height, width = image.shape[:2]
    scale = scale or overlay_scale((height, width))
    size = (width * scale, height * scale)
    pixels = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    base = np.asarray(Image.fromarray(pixels, "RGB").resize(size, Image.Resampling.NEAREST), np.float32)
    heat = Image.fromarray(np.asarray(heatmap, np.float32), "F").resize(size, Image.Resampling.BILINEAR)
    colours = jet(np.asarray(heat)).astype(np.float32)
    blended = np.round((1 - alpha) * base + alpha * colours).astype(np.uint8)
    return Picture(encode_png(blended), size[0], size[1], scale=scale)


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=3)  # level 3: most of 6's size, far faster
    return buffer.getvalue()
