"""Fuzzing the multipart parser (python-multipart behind `service.api.body`).

Well-formed forms are generated, then mutated the ways broken and hostile clients send them:
truncated anywhere, bytes flipped, the boundary changed in the header or the body, part
headers dropped or bloated, line endings mangled, thousands of parts. Every answer must be
a 200 or a documented 4xx in the one error body, never a 5xx; memory while parsing stays
within a small multiple of the body, and a flood of parts is refused without parsing it all.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from service.api.body import read_images_body
from service.errors import ServiceError
from service.main import create_app
from tests.reliability.conftest import assert_no_leak
from tests.service.conftest import grey_image, settings_for, wait_until

DOCUMENTED_4XX = {400, 404, 413, 415, 422}  # 404: a `version` field naming no version
MAX_BODY = 256 * 1024
MAX_IMAGES = 8


@pytest.fixture(scope="module")
def client(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("multipart-store")
    models.write(root, "grey", 1)
    settings = settings_for(root, max_body_bytes=MAX_BODY, max_images_per_request=MAX_IMAGES, max_queue_size=64)
    with TestClient(create_app(settings)) as http:
        wait_until(lambda: http.get("/health/ready").status_code == 200)
        yield http, root


# ---------------------------------------------------------------------------------- forms


def encode(parts: list[tuple[bytes, bytes]], boundary: bytes) -> bytes:
    """`parts` as (header block, content) -> a multipart body with its closing delimiter."""
    out = b"".join(b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n" for headers, content in parts)
    return out + b"--" + boundary + b"--\r\n"


names = st.sampled_from([b"file", b"top_k", b"version", b"other", b"", b"fi\xc3\xa9le", b'a"b'])
filenames = st.one_of(st.none(), st.sampled_from([b"a.png", b"", b"x\\y.png", b"\xff\xfe.png", b'q"uote.png']))
contents = st.one_of(st.just(grey_image(0)), st.just(grey_image(200)), st.binary(max_size=300), st.just(b"3"))


@st.composite
def part(draw) -> tuple[bytes, bytes]:
    name, filename = draw(names), draw(filenames)
    disposition = b'Content-Disposition: form-data; name="' + name + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    headers = [disposition]
    if draw(st.booleans()):
        headers.append(b"Content-Type: " + draw(st.sampled_from([b"image/png", b"application/octet-stream", b"x"])))
    if draw(st.integers(0, 9)) == 0:
        headers.append(b"X-Padding: " + b"p" * draw(st.integers(0, 20_000)))  # bloated part header
    return b"\r\n".join(draw(st.permutations(headers))), draw(contents)


boundaries = st.binary(min_size=1, max_size=80).filter(lambda b: b"\r" not in b and b"\n" not in b) | st.just(
    b"----WebKitFormBoundary7MA4YWxkTrZu0gW"
)


@st.composite
def mutated_form(draw) -> tuple[bytes, str]:
    boundary = draw(boundaries)
    body = bytearray(encode(draw(st.lists(part(), min_size=0, max_size=6)), boundary))
    header_boundary = boundary.decode("latin-1")
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "splice", "crlf", "boundary", "quote", "drop-header"]))
        if kind == "truncate" and body:
            del body[draw(st.integers(0, len(body) - 1)) :]
        elif kind == "flip" and body:
            at = draw(st.integers(0, len(body) - 1))
            body[at] ^= draw(st.integers(1, 255))
        elif kind == "splice" and body:
            at = draw(st.integers(0, len(body)))
            body[at:at] = draw(st.sampled_from([b"--" + boundary, b"\r\n\r\n", b"--", b"\r\n", b"\x00" * 64]))
        elif kind == "crlf":
            body = bytearray(bytes(body).replace(b"\r\n", b"\n"))
        elif kind == "boundary":
            header_boundary = draw(st.sampled_from(["", "x", "z" * 300, header_boundary + "x", header_boundary[:-1]]))
        elif kind == "quote":
            header_boundary = '"' + header_boundary + '"'
        elif kind == "drop-header":
            body = bytearray(bytes(body).replace(b"Content-Disposition", b"Content-Dispositio", 1))
    content_type = draw(
        st.sampled_from(
            [
                f"multipart/form-data; boundary={header_boundary}",
                f"multipart/form-data;boundary={header_boundary}; charset=utf-8",
                "multipart/form-data",
                f"Multipart/Form-Data; BOUNDARY={header_boundary}",
            ]
        )
    )
    return bytes(body), content_type


def assert_documented(response, root) -> None:
    assert response.status_code == 200 or response.status_code in DOCUMENTED_4XX, response.text[:500]
    assert_no_leak(response.text, root)
    if response.status_code != 200:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(form=mutated_form())
def test_mutated_multipart_bodies_get_200_or_a_documented_error(client, form):
    http, root = client
    body, content_type = form
    try:
        header = content_type.encode("latin-1")
    except UnicodeEncodeError:
        return  # not sendable as an HTTP header
    response = http.post("/models/grey/predict", content=body, headers={"content-type": header})
    assert_documented(response, root)


def test_a_well_formed_form_is_parsed_exactly(client):
    http, root = client
    parts = [
        (b'Content-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png', grey_image(0)),
        (b'Content-Disposition: form-data; name="other"', b"ignored"),
        (b'Content-Disposition: form-data; name="top_k"', b"1"),
        (b'Content-Disposition: form-data; name="file"; filename="b.png"', grey_image(255)),
    ]
    response = http.post(
        "/models/grey/predict",
        content=encode(parts, b"xyz"),
        headers={"content-type": 'multipart/form-data; boundary="xyz"'},
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == ["dark", "bright"]
    assert [len(p["top_k"]) for p in predictions] == [1, 1]


@pytest.mark.parametrize(
    "body, status",
    [
        (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nabc', 400),  # truncated
        (b"--xyz\r\n\r\nabc\r\n--xyz--\r\n", 400),  # no Content-Disposition
        (b'--xyz\r\nContent-Disposition: attachment; name="file"\r\n\r\nabc\r\n--xyz--\r\n', 400),
        (b"garbage without any boundary", 400),
        (b"", 400),
        (b"--xyz--\r\n", 422),  # a well-formed empty form: no images
    ],
)
def test_malformed_forms_get_their_documented_status(client, body, status):
    http, root = client
    response = http.post(
        "/models/grey/predict", content=body, headers={"content-type": "multipart/form-data; boundary=xyz"}
    )
    assert response.status_code == status, response.text
    assert_documented(response, root)


def test_a_flood_of_parts_is_refused_quickly(client):
    http, root = client
    empty = (b'Content-Disposition: form-data; name="x"', b"")
    body = encode([empty] * 5000, b"b")  # about 240 KB, just under the body limit
    assert len(body) < MAX_BODY
    started = time.perf_counter()
    response = http.post(
        "/models/grey/predict", content=body, headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert time.perf_counter() - started < 2
    assert response.status_code == 413 and "parts" in response.json()["error"]["message"]
    files = [(b'Content-Disposition: form-data; name="file"; filename="a.png"', grey_image(0))] * (MAX_IMAGES + 1)
    response = http.post(
        "/models/grey/predict", content=encode(files, b"b"), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_many_images"


def _parse(body: bytes, boundary: bytes, chunk: int) -> tuple[list, int]:
    """`read_images_body` on a real Starlette request whose body arrives in `chunk`-byte messages.

    Returns the inputs and the peak of memory allocated while parsing (the body's messages excluded).
    """
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-type", b"multipart/form-data; boundary=" + boundary)],
    }

    async def parse() -> tuple[list, int]:
        tracemalloc.start()
        try:
            inputs = (await read_images_body(Request(scope, receive), max_images=64)).inputs
            return inputs, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    return asyncio.run(parse())


@pytest.mark.parametrize("chunk", [1000, 65536])
def test_parsing_memory_stays_within_a_small_multiple_of_the_body(chunk):
    images = [bytes([i]) * 200_000 for i in range(40)]  # 8 MB of parts
    body = encode([(b'Content-Disposition: form-data; name="file"; filename="a"', data) for data in images], b"bnd")
    parsed, peak = _parse(body, b"bnd", chunk)
    assert parsed == images
    # the parts themselves (1x the body) and one part's pieces while it is joined: never the body twice over
    assert peak < 1.2 * len(body), peak


def test_errors_raised_inside_the_parser_are_domain_errors():
    body = b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nx\r\n--b--\r\n'  # no filename
    with pytest.raises(ServiceError) as caught:
        _parse(body, b"b", 7)
    assert caught.value.status_code == 422 and "filename" in caught.value.message
