"""The Open Inference Protocol (KServe/Triton "v2") REST codec: bytes in, checked tensors out, and back.

Pure code, no HTTP framework: `parse_request` turns an inference request body (JSON, with or
without the binary tensor data extension) into one validated input and the outputs asked
for; `encode_response` builds the answer as JSON or JSON followed by binary tensors. Every
malformed request raises `BadRequest` (400) with a message saying what was wrong.

Binary framing (the extension tritonclient uses by default): the body is a JSON header of
`Inference-Header-Content-Length` bytes, then each binary input's bytes in input order, each
input saying its size in `parameters.binary_data_size`. Numbers are little-endian; a BYTES
tensor is its elements in row-major order, each a 4-byte little-endian length then the bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelcard import InputSpec
from service.errors import BadRequest, TooManyImages
from service.images import check_pixel_values
from service.inference import top_indices

PIXELS, IMAGE = "pixels", "image"
PROBABILITIES, LABEL = "probabilities", "label"
CLASS_OUTPUTS = (PROBABILITIES, LABEL)
EXTENSIONS = ("binary_tensor_data", "classification")
HEADER_LENGTH = "Inference-Header-Content-Length"

# datatype -> little-endian numpy dtype, for the numeric types this service reads or writes
_NUMPY: dict[str, np.dtype[Any]] = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4")}
_PIXEL_TYPES = ("UINT8", "FP32")
_MAX_ID = 256


@dataclass(frozen=True)
class RequestedOutput:
    """One output a request asked for.

    Attributes:
        name: `probabilities`, `label` or a layer name.
        binary: send it in the binary section rather than as JSON `data`.
        classification: the classification extension's k (top k as "score:index:label"), if asked.
    """

    name: str
    binary: bool = False
    classification: int | None = None


@dataclass
class InferenceRequest:
    """A parsed, checked inference request: exactly one input, and the outputs to send.

    Attributes:
        id: the request's `id`, echoed in the response.
        input_name: `pixels` or `image`.
        pixels: for `pixels`, float32 `(n, height, width, channels)` raw pixel values.
        images: for `image`, each element's bytes (an encoded image file).
        outputs: the outputs to send, in request order (default: probabilities and label).
    """

    id: str | None
    input_name: str
    pixels: np.ndarray | None = None
    images: list[bytes] | None = None
    outputs: list[RequestedOutput] = field(default_factory=list)

    @property
    def count(self) -> int:
        """How many images the request holds."""
        if self.images is not None:
            return len(self.images)
        assert self.pixels is not None
        return len(self.pixels)


@dataclass(frozen=True)
class OutputTensor:
    """One response tensor: numbers (`FP32`) as an array, or `BYTES` as a list of bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]
    binary: bool


# ---------------------------------------------------------------------------- parsing


def header_length(value: str | None, body_size: int) -> int | None:
    """The `Inference-Header-Content-Length` header checked against the body; None when absent."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        if text.lstrip("-").isdigit():
            raise BadRequest(f"{HEADER_LENGTH} must not be negative (got {text[:20]})")
        raise BadRequest(f"{HEADER_LENGTH} must be a whole number of bytes (got {text[:20]!r})")
    length = int(text)
    if length > body_size:
        raise BadRequest(f"{HEADER_LENGTH} is {length} but the body has only {body_size} bytes")
    return length


def parse_request(
    body: bytes,
    header_value: str | None,
    spec: InputSpec,
    outputs: Collection[str],
    *,
    num_classes: int,
    max_images: int,
) -> InferenceRequest:
    """Parse and check an inference request body.

    Args:
        body: the whole HTTP body.
        header_value: the `Inference-Header-Content-Length` header, if sent.
        spec: the model's input spec (height, width, channels, value range).
        outputs: every output name the model offers (probabilities, label and its layers).
        num_classes: the model's class count (caps the classification extension's k).
        max_images: most images one request may hold.

    Raises:
        BadRequest: anything malformed, with what was wrong.
        TooManyImages: more than `max_images` images.
    """
    length = header_length(header_value, len(body))
    json_part = body if length is None else body[:length]
    binary = memoryview(body)[len(json_part) :]
    try:
        payload = json.loads(json_part)
    except (ValueError, RecursionError) as error:
        detail = f" at line {error.lineno} column {error.colno}" if isinstance(error, json.JSONDecodeError) else ""
        if length is None and b"\0" in body[:4096]:
            detail += f"; a body with binary tensor data needs the {HEADER_LENGTH} header"
        raise BadRequest(f"the inference request header is not valid JSON{detail}") from None
    if not isinstance(payload, dict):
        raise BadRequest("the inference request must be a JSON object")
    request_id = payload.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > _MAX_ID):
        raise BadRequest(f"id must be a string of at most {_MAX_ID} characters")
    parameters = _parameters(payload, "the request")
    binary_default = _flag(parameters, "binary_data_output", "the request")

    inputs = payload.get("inputs")
    if not isinstance(inputs, list):
        raise BadRequest('the request needs an "inputs" list holding one input: "pixels" or "image"')
    if len(inputs) != 1:
        raise BadRequest(f'send exactly one input ("pixels" or "image"), not {len(inputs)}')
    request = _parse_input(inputs[0], binary, spec, max_images, request_id)
    request.outputs = _parse_outputs(payload.get("outputs"), outputs, binary_default, num_classes)
    return request


def _parse_input(
    tensor: Any, binary: memoryview, spec: InputSpec, max_images: int, request_id: str | None
) -> InferenceRequest:
    if not isinstance(tensor, dict):
        raise BadRequest("inputs[0] must be an object with name, datatype, shape and data")
    name = tensor.get("name")
    if name not in (PIXELS, IMAGE):
        shown = repr(name)[:80]
        raise BadRequest(f'unknown input {shown}; this model takes "pixels" (UINT8 or FP32) or "image" (BYTES)')
    datatype = tensor.get("datatype")
    allowed = _PIXEL_TYPES if name == PIXELS else ("BYTES",)
    if datatype not in allowed:
        raise BadRequest(f"input {name} has datatype {str(datatype)[:20]!r}; it takes {' or '.join(allowed)}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise BadRequest(f"input {name}: shape must be a list of integers")
    expected = [spec.height, spec.width, spec.channels] if name == PIXELS else []
    if len(shape) != 1 + len(expected) or shape[1:] != expected or shape[0] < 1:
        raise BadRequest(
            f"input {name} has shape {shape[:8]}; this model takes {[-1, *expected]} with a batch of 1 or more"
        )
    count = shape[0]
    if count > max_images:
        raise TooManyImages(f"{count} images; at most {max_images} per request")
    parameters = _parameters(tensor, f"input {name}")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in tensor:
            raise BadRequest(f"input {name} has both data and binary_data_size; send one")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"input {name}: binary_data_size must be a non-negative integer")
        if size != len(binary):
            raise BadRequest(f"input {name}: binary_data_size is {size} but {len(binary)} bytes follow the JSON header")
        raw = binary
    else:
        if len(binary):
            raise BadRequest(f"{len(binary)} bytes follow the JSON header but no input has binary_data_size")
        if "data" not in tensor:
            raise BadRequest(f"input {name} has neither data nor parameters.binary_data_size")
        raw = None
    if name == IMAGE:
        if raw is not None:
            images = _bytes_elements(raw, count, name)
        else:
            images = _json_bytes(tensor["data"], count, name, parameters.get("content_type"))
        return InferenceRequest(request_id, name, images=images)
    return InferenceRequest(request_id, name, pixels=_pixels(tensor, raw, str(datatype), [count, *expected], spec))


def _pixels(tensor: dict, raw: memoryview | None, datatype: str, shape: list[int], spec: InputSpec) -> np.ndarray:
    values = math.prod(shape)
    if raw is not None:
        dtype = _NUMPY[datatype]
        if len(raw) != values * dtype.itemsize:
            raise BadRequest(
                f"input pixels: shape {shape} of {datatype} needs {values * dtype.itemsize} bytes, "
                f"binary_data_size is {len(raw)}"
            )
        array = np.frombuffer(raw, dtype)
    else:
        try:
            array = np.asarray(tensor["data"])
        except (ValueError, OverflowError):
            raise BadRequest("input pixels: data is ragged or not numeric") from None
        if array.dtype.kind not in ("iu" if datatype == "UINT8" else "iuf"):
            kind = "integers" if datatype == "UINT8" else "numbers"
            raise BadRequest(f"input pixels: {datatype} data must hold {kind} only")
        if array.size != values:
            raise BadRequest(f"input pixels: shape {shape} needs {values} values, data has {array.size}")
        if datatype == "UINT8" and (array.min() < 0 or array.max() > 255):
            raise BadRequest("input pixels: UINT8 values must be within [0, 255]")
    pixels = array.astype(np.float32).reshape(shape)
    check_pixel_values(pixels, spec, "input pixels")
    return pixels


def _bytes_elements(raw: memoryview, count: int, name: str) -> list[bytes]:
    """A binary BYTES tensor: `count` elements, each a 4-byte little-endian length then the bytes."""
    elements, position = [], 0
    for index in range(count):
        if position + 4 > len(raw):
            raise BadRequest(f"input {name}: binary data ends before element {index} of {count} (its length prefix)")
        size = int.from_bytes(raw[position : position + 4], "little")
        position += 4
        if position + size > len(raw):
            raise BadRequest(f"input {name}: element {index} says {size} bytes but only {len(raw) - position} remain")
        elements.append(bytes(raw[position : position + size]))
        position += size
    if position != len(raw):
        raise BadRequest(f"input {name}: {len(raw) - position} bytes left over after {count} elements")
    return elements


def _json_bytes(data: Any, count: int, name: str, content_type: Any) -> list[bytes]:
    """BYTES elements sent as JSON strings: UTF-8 text, or base64 with `parameters.content_type: "base64"`."""
    if content_type not in (None, "base64", "str"):
        raise BadRequest(f'input {name}: parameters.content_type must be "base64" or "str"')
    flat = data
    while isinstance(flat, list) and len(flat) == 1 and isinstance(flat[0], list):
        flat = flat[0]  # [[...]]: a nested BYTES tensor of shape [n] has one level only
    if not isinstance(flat, list) or len(flat) != count:
        shown = len(flat) if isinstance(flat, list) else type(flat).__name__
        raise BadRequest(f"input {name}: shape [{count}] needs {count} elements, data has {shown}")
    elements = []
    for index, item in enumerate(flat):
        if not isinstance(item, str):
            raise BadRequest(f"input {name}: element {index} must be a string")
        if content_type == "base64":
            try:
                elements.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError):
                raise BadRequest(f"input {name}: element {index} is not valid base64") from None
        else:
            elements.append(item.encode("utf-8", "surrogatepass"))
    return elements


def _parse_outputs(
    requested: Any, known: Collection[str], binary_default: bool, num_classes: int
) -> list[RequestedOutput]:
    if requested is None or requested == []:
        return [RequestedOutput(name, binary_default) for name in CLASS_OUTPUTS]
    if not isinstance(requested, list):
        raise BadRequest('"outputs" must be a list of {"name": ...} objects')
    parsed, seen = [], set()
    for index, item in enumerate(requested):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest(f'outputs[{index}] must be an object with a "name"')
        name = item["name"]
        if name not in known:
            raise BadRequest(f"unknown output {name[:100]!r}; this model's outputs: {', '.join(known)}")
        if name in seen:
            raise BadRequest(f"output {name!r} is asked for twice")
        seen.add(name)
        parameters = _parameters(item, f"output {name}")
        binary = _flag(parameters, "binary_data", f"output {name}", binary_default)
        k = parameters.get("classification")
        if k is not None:
            if name != PROBABILITIES:
                raise BadRequest(f"classification applies to the {PROBABILITIES} output, not {name!r}")
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise BadRequest(f"output {name}: classification must be a positive integer")
            k = min(k, num_classes)
        parsed.append(RequestedOutput(name, binary, k))
    return parsed


def _parameters(holder: dict, where: str) -> dict:
    parameters = holder.get("parameters", {})
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"{where}: parameters must be an object")
    return parameters


def _flag(parameters: dict, key: str, where: str, default: bool = False) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{where}: parameters.{key} must be true or false")
    return value


# ---------------------------------------------------------------------------- responses


def classification(probabilities: np.ndarray, k: int, labels: Sequence[str]) -> list[bytes]:
    """The classification extension: each row's top k as "score:index:label", row-major."""
    best = top_indices(probabilities, k)
    return [
        f"{probabilities[row, index]:f}:{index}:{labels[index]}".encode()
        for row in range(len(best))
        for index in best[row].tolist()
    ]


def encode_response(
    model: str, version: int, request_id: str | None, outputs: Sequence[OutputTensor]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it (else None)."""
    tensors, chunks = [], []
    for output in outputs:
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": list(output.shape)}
        if output.binary:
            chunk = _binary(output)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        elif output.datatype == "BYTES":
            entry["data"] = [item.decode("utf-8", "replace") for item in output.data]
        else:
            entry["data"] = np.asarray(output.data, np.float32).ravel().tolist()
        tensors.append(entry)
    header = {"model_name": model, "model_version": str(version), "outputs": tensors}
    if request_id is not None:
        header["id"] = request_id
    text = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return text, None
    return b"".join([text, *chunks]), len(text)


def _binary(output: OutputTensor) -> bytes:
    if output.datatype == "BYTES":
        return b"".join(len(item).to_bytes(4, "little") + item for item in output.data)
    return np.ascontiguousarray(output.data, _NUMPY[output.datatype]).tobytes()


def tensor_metadata(name: str, datatype: str, shape: Sequence[int | None]) -> dict:
    """A metadata tensor: unknown dimensions (the batch one first) as -1."""
    return {"name": name, "datatype": datatype, "shape": [-1, *(-1 if d is None else int(d) for d in shape)]}
