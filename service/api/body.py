"""Prediction request bodies -> inputs and fields, shared by every route taking images.

Three forms: multipart with `file` parts; JSON `{"instances": [{"b64": ...}, ...]}`; JSON
`{"instances": [<pixel array>, ...]}`. Parsed by hand, so errors say what is wrong without
repeating the body. The body size limit is enforced while the body is read (`middleware`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from service.errors import BadRequest, InvalidInput, TooManyImages, UnsupportedFormat

_FIELDS = ("model", "version", "top_k")
_JSON_OFFLOAD_BYTES = 256 * 1024  # parse bigger JSON bodies off the event loop


@dataclass
class ImagesBody:
    """What a prediction body held: inputs in order, and optional fields (`model`, `version`, `top_k`)."""

    inputs: list[bytes | Any]
    fields: dict[str, Any] = field(default_factory=dict)

    def integer(self, name: str) -> int | None:
        value = self.fields.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise InvalidInput(f"{name} must be a positive integer")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"{name} must be a positive integer") from None
        if number < 1:
            raise InvalidInput(f"{name} must be a positive integer")
        return number


async def read_images_body(request: Request, max_images: int) -> ImagesBody:
    """Parse a prediction body.

    Raises:
        UnsupportedFormat: neither multipart/form-data nor JSON.
        BadRequest: malformed multipart.
        InvalidInput: wrong JSON, no images, bad base64.
        TooManyImages: more than `max_images`.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        body = await _read_multipart(request, max_images)
    elif content_type == "application/json" or content_type.endswith("+json"):
        body = await _read_json(request, max_images)
    else:
        shown = content_type[:100] or "none"
        raise UnsupportedFormat(f"content type {shown}; send multipart/form-data with file parts, or JSON instances")
    if not body.inputs:
        raise InvalidInput("no images: send one or more `file` parts, or a non-empty `instances` list")
    return body


async def _read_multipart(request: Request, max_images: int) -> ImagesBody:
    content_type = request.headers.get("content-type", "")
    data = await request.body()
    inputs: list[bytes | Any] = []
    fields: dict[str, Any] = {}
    for name, filename, content in parse_multipart(data, content_type):
        if name == "file":
            if filename is None:
                raise InvalidInput("`file` parts must be file uploads (with a filename)")
            if len(inputs) == max_images:
                raise TooManyImages(f"more than {max_images} images in one request")
            inputs.append(content)
        elif name in _FIELDS and filename is None:
            fields[name] = content.decode("utf-8", "replace")
    return ImagesBody(inputs, fields)


_PARAM = re.compile(r';\s*([A-Za-z0-9_\-*]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def _header_params(value: str) -> tuple[str, dict[str, str]]:
    kind = value.split(";", 1)[0].strip().lower()
    params = {}
    for key, raw in _PARAM.findall(value):
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[key.lower()] = raw
    return kind, params


def parse_multipart(body: bytes, content_type: str) -> Iterator[tuple[str, str | None, bytes]]:
    """(field name, filename or None, content) for each part of a multipart/form-data body.

    The body is already in memory (bounded by the body limit), so this is a split on the
    boundary rather than a streaming parser: a fraction of the per-request cost of one.

    Raises:
        BadRequest: no boundary, or a malformed or unterminated body.
    """
    _, params = _header_params(content_type)
    boundary = params.get("boundary", "")
    if not 1 <= len(boundary) <= 200 or not boundary.isascii():
        raise BadRequest("multipart body without a valid boundary parameter")
    delimiter = b"--" + boundary.encode("ascii")
    position = body.find(delimiter)
    if position < 0:
        raise BadRequest("malformed multipart body: boundary not found")
    position += len(delimiter)
    separator = b"\r\n" + delimiter
    while True:
        if body.startswith(b"--", position):
            return  # closing delimiter; anything after it is an epilogue
        if not body.startswith(b"\r\n", position):
            raise BadRequest("malformed multipart body: bad delimiter line")
        position += 2
        end = body.find(separator, position)
        if end < 0:
            raise BadRequest("malformed multipart body: unterminated part")
        split = body.find(b"\r\n\r\n", position, end + 2)
        if split < 0:
            raise BadRequest("malformed multipart body: part without headers")
        name, filename = None, None
        for line in body[position:split].split(b"\r\n"):
            header, _, value = line.decode("utf-8", "replace").partition(":")
            if header.strip().lower() == "content-disposition":
                kind, disposition = _header_params(value)
                if kind != "form-data":
                    raise BadRequest("malformed multipart body: parts must be form-data")
                name = disposition.get("name")
                filename = disposition.get("filename", disposition.get("filename*"))
        if name is None:
            raise BadRequest("malformed multipart body: part without a Content-Disposition name")
        yield name, filename, body[split + 4 : end]
        position = end + len(separator)


async def _read_json(request: Request, max_images: int) -> ImagesBody:
    data = await request.body()
    try:
        if len(data) > _JSON_OFFLOAD_BYTES:
            payload = await run_in_threadpool(json.loads, data)
        else:
            payload = json.loads(data)
    except (ValueError, RecursionError) as error:
        detail = f" at line {error.lineno} column {error.colno}" if isinstance(error, json.JSONDecodeError) else ""
        raise InvalidInput(f"body is not valid JSON{detail}") from None
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InvalidInput('JSON body must be an object with an "instances" list')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InvalidInput('"instances" must be a list')
    if len(instances) > max_images:
        raise TooManyImages(f"{len(instances)} instances; at most {max_images} per request")
    inputs = [_instance(i, item) for i, item in enumerate(instances)]
    fields = {name: payload[name] for name in _FIELDS if name in payload}
    return ImagesBody(inputs, fields)


def _instance(index: int, item: Any) -> bytes | Any:
    if isinstance(item, dict):
        encoded = item.get("b64")
        if not isinstance(encoded, str) or set(item) != {"b64"}:
            raise InvalidInput(f'instances[{index}]: an object instance must be {{"b64": "<base64 image file>"}}')
        if encoded.startswith("data:") and "," in encoded[:200]:
            encoded = encoded.split(",", 1)[1]  # a data URL: data:image/png;base64,....
        try:
            return base64.b64decode(encoded.replace("\n", "").replace("\r", ""), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"instances[{index}]: b64 is not valid base64") from None
    if isinstance(item, list):
        return item
    raise InvalidInput(f'instances[{index}]: expected {{"b64": ...}} or a pixel array (nested lists)')
