"""Prediction request bodies -> inputs and fields, shared by every route taking images.

Three forms: multipart with `file` parts; JSON `{"instances": [{"b64": ...}, ...]}`; JSON
`{"instances": [<pixel array>, ...]}`. Multipart goes through python-multipart's streaming
parser as the body arrives; JSON through `json`. Errors say what is wrong without repeating
the body. The body size limit is enforced while the body is read (`middleware`).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from service.errors import BadRequest, InvalidInput, PayloadTooLarge, TooManyImages, UnsupportedFormat

_FIELDS = ("model", "version", "top_k")
# python-multipart logs a warning for each malformed body before raising; the client gets its
# 400 and the log would get one line per bad request (a cheap flood): errors only.
logging.getLogger("python_multipart").setLevel(logging.ERROR)
_OFFLOAD_BYTES = 256 * 1024  # parse bigger bodies off the event loop
T = TypeVar("T")
_MAX_OTHER_PARTS = 16  # form parts allowed besides the images: the fields, and some slack


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
    boundary = parse_options_header(request.headers.get("content-type", ""))[1].get(b"boundary", b"")
    if not 1 <= len(boundary) <= 200:
        raise BadRequest("multipart body without a valid boundary parameter")
    form = _Form(max_images)
    parser = MultipartParser(boundary, cast(Any, form.callbacks()), max_header_count=16, max_header_size=8 * 1024)
    try:
        async for chunk in request.stream():  # parsed as it arrives: no second copy of the body
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as error:
        raise BadRequest(f"malformed multipart body: {str(error)[:100]}") from None
    if not form.ended:
        raise BadRequest("malformed multipart body: no closing boundary (truncated?)")
    return ImagesBody(form.inputs, form.fields)


class _Form:
    """Callbacks for python-multipart's streaming parser: keeps `file` parts and the known fields.

    Parts with other names are parsed and dropped. Raises the domain errors itself, from inside
    `parser.write`, so a bad form stops as soon as it is known to be bad.
    """

    def __init__(self, max_images: int) -> None:
        self.max_images = max_images
        self.max_parts = max_images + _MAX_OTHER_PARTS
        self.inputs: list[bytes | Any] = []
        self.fields: dict[str, Any] = {}
        self.ended = False
        self._parts = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition: bytes | None = None
        self._chunks: list[bytes] | None = None  # None: this part is dropped
        self._name = ""
        self._filename: str | None = None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > self.max_parts:
            raise PayloadTooLarge(f"more than {self.max_parts} parts in one form")
        self._disposition = None
        self._chunks = None

    def _header_end(self) -> None:
        if bytes(self._header_name).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        if self._disposition is None:
            raise BadRequest("malformed multipart body: part without a Content-Disposition name")
        kind, params = parse_options_header(self._disposition.decode("latin-1"))
        if kind != b"form-data":
            raise BadRequest("malformed multipart body: parts must be form-data")
        if b"name" not in params:
            raise BadRequest("malformed multipart body: part without a Content-Disposition name")
        self._name = params[b"name"].decode("utf-8", "replace")
        filename = params.get(b"filename")
        self._filename = None if filename is None else filename.decode("utf-8", "replace")
        if self._name == "file":
            if self._filename is None:
                raise InvalidInput("`file` parts must be file uploads (with a filename)")
            if len(self.inputs) == self.max_images:
                raise TooManyImages(f"more than {self.max_images} images in one request")
            self._chunks = []
        elif self._name in _FIELDS and self._filename is None:
            self._chunks = []

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._chunks is not None:
            self._chunks.append(data[start:end])

    def _part_end(self) -> None:
        if self._chunks is None:
            return
        content = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        if self._name == "file":
            self.inputs.append(content)
        else:
            self.fields[self._name] = content.decode("utf-8", "replace")
        self._chunks = None

    def _end(self) -> None:
        self.ended = True


async def parse_body(size: int, parse: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`parse(*args, **kwargs)` for a body of `size` bytes: on the event loop when small, in the
    thread pool above `_OFFLOAD_BYTES` (JSON of 20 MiB takes the loop for a second or more)."""
    if size > _OFFLOAD_BYTES:
        return await run_in_threadpool(parse, *args, **kwargs)
    return parse(*args, **kwargs)


async def _read_json(request: Request, max_images: int) -> ImagesBody:
    data = await request.body()
    try:
        payload = await parse_body(len(data), json.loads, data)
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
