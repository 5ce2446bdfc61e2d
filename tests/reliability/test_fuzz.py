"""Fuzzing: the OpenAPI schema through schemathesis, and mutated image files through the decoder.

- schemathesis generates requests for every operation of the app's own schema and runs them
  in-process (the lifespan included): no 5xx, and every response conforms to the schema;
- hypothesis generates byte strings and mutates real PNG/JPEG/GIF/BMP/TIFF/WEBP files (bit
  flips, truncations, header edits, spliced chunks) for `service.images.decode_image` and for
  `/predict`: a decoded image or one of the documented errors (400/413/415/422), never a 500.

Every response body is also checked for tracebacks and filesystem paths.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import time

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.config import SchemathesisConfig

from service.errors import ServiceError
from service.images import decode_image
from service.main import create_app
from tests.reliability.conftest import assert_no_leak
from tests.service.conftest import GREY_SPEC, RGB_SPEC, settings_for, wait_until

DOCUMENTED_4XX = {400, 413, 415, 422}
MAX_PIXELS = 250_000
MAX_BODY = 256 * 1024
KNOWN_MODELS = ["grey", "colors", "edges"]

# ---------------------------------------------------------------------------------- schemathesis


@pytest.fixture(scope="module")
def fuzzed_app(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-store")
    for name in KNOWN_MODELS:
        models.write(root, name, 1)
    settings = settings_for(
        root, max_body_bytes=MAX_BODY, max_image_pixels=MAX_PIXELS, max_images_per_request=8, max_queue_size=64
    )
    return create_app(settings), root


@pytest.fixture(scope="module")
def api_schema(fuzzed_app):
    """The app's schema, with the app's lifespan running in schemathesis's own event loop thread."""
    from schemathesis.python import asgi

    app, root = fuzzed_app
    # A request breaking the schema must be refused with a 4xx; schemathesis's default list of
    # refusals leaves out 413, which this API gives first when a bad request also has too many images.
    refusals = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
    config = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": refusals}}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    with asgi.get_client(app) as client:  # starts the lifespan once; it stays up for the module
        wait_until(lambda: client.get("/health/ready").status_code == 200)
        predicted = client.post("/models/edges/predict", files={"file": ("a.png", _png((8, 8), "RGB"))})
        prediction_id = predicted.json()["predictions"][0]["id"]

    # Random path parameters would almost only meet 404s: half the time, use real ones.
    real = {"name": KNOWN_MODELS, "layer": ["conv1", "conv2", "probabilities"], "id": [prediction_id]}

    @schema.hook
    def flatmap_path_parameters(context, path_parameters):
        given = path_parameters or {}
        replacements = [{**given, key: value} for key in given for value in real.get(key, [])]
        if not replacements:
            return st.just(path_parameters)
        return st.one_of(st.just(path_parameters), st.sampled_from(replacements))

    yield schema
    with contextlib.suppress(Exception):
        asgi.shutdown_lifespans()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
def test_every_operation_conforms_and_never_fails_with_5xx(case, fuzzed_app):
    _, root = fuzzed_app
    # Excluded: "schema-valid request rejected". No schema can say "these bytes decode as an
    # image" or "this nested list has the model's input shape", so schema-valid bodies that are
    # not images rightly get 400/422; those statuses are checked against the schema instead.
    response = case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])
    assert response.status_code < 500, response.text[:500]
    assert_no_leak(response.content, root)


# ---------------------------------------------------------------------------------- image files


def _png(size: tuple[int, int], mode: str, fmt: str = "PNG", **save) -> bytes:
    rng = np.random.default_rng(sum(size) + len(mode) + len(fmt))
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2, "I;16": 1}[mode]
    shape = (size[1], size[0]) if channels == 1 else (size[1], size[0], channels)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, shape).astype(np.uint16))
    elif mode == "LA":
        image = Image.fromarray(rng.integers(0, 255, (*shape[:2], 4)).astype(np.uint8), "RGBA").convert("LA")
    else:
        image = Image.fromarray(rng.integers(0, 255, shape).astype(np.uint8), mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def _palette_gif() -> bytes:
    frames = [Image.new("P", (12, 10), i * 40) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], transparency=0)
    return buffer.getvalue()


def _exif_jpeg() -> bytes:
    image = Image.new("RGB", (16, 8), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


SEEDS = {
    "png-grey": _png((9, 7), "L"),
    "png-rgba": _png((8, 8), "RGBA"),
    "png-16bit": _png((6, 6), "I;16"),
    "png-interlaced": _png((16, 12), "RGB", optimize=False, interlace=1),
    "png-la": _png((5, 9), "LA"),
    "jpeg": _png((16, 16), "RGB", "JPEG", quality=80),
    "jpeg-progressive": _png((24, 16), "RGB", "JPEG", progressive=True),
    "jpeg-grey": _png((8, 8), "L", "JPEG"),
    "jpeg-exif": _exif_jpeg(),
    "gif": _palette_gif(),
    "bmp": _png((7, 5), "RGB", "BMP"),
    "tiff": _png((8, 6), "RGB", "TIFF", compression="tiff_lzw"),
    "webp": _png((10, 10), "RGB", "WEBP", quality=50),
}


@st.composite
def mutated_files(draw) -> bytes:
    """A seed file with a few bit flips, byte overwrites (often in the header), cuts or splices."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "header", "truncate", "splice", "size"]))
        if not data:
            break
        if kind == "flip":
            position = draw(st.integers(0, len(data) - 1))
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "header":  # signatures, chunk lengths, dimensions, markers live up front
            position = draw(st.integers(0, min(len(data), 64) - 1))
            data[position] = draw(st.integers(0, 255))
        elif kind == "truncate":
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif kind == "splice":  # a piece of the file repeated somewhere else
            start = draw(st.integers(0, len(data) - 1))
            piece = data[start : start + draw(st.integers(1, 64))]
            position = draw(st.integers(0, len(data)))
            data[position:position] = piece
        else:  # big-endian 32-bit fields set to extremes: PNG width/height, chunk lengths
            position = draw(st.integers(0, max(0, min(len(data), 40) - 4)))
            data[position : position + 4] = draw(
                st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x01\x00\x00"])
            )
    return bytes(data)


def assert_decodes_or_refuses(data: bytes) -> None:
    for spec in (GREY_SPEC, RGB_SPEC):
        started = time.perf_counter()
        try:
            array = decode_image(data, spec, MAX_PIXELS)
        except ServiceError as error:
            assert error.status_code in DOCUMENTED_4XX, (error.status_code, error.message)
            assert_no_leak(error.message)
        else:
            assert array.shape == spec.shape and array.dtype == np.uint8
        assert time.perf_counter() - started < 5, "decoding a small file must not take seconds"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2048))
def test_random_bytes_decode_or_get_a_documented_error(data):
    assert_decodes_or_refuses(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_files())
def test_mutated_image_files_decode_or_get_a_documented_error(data):
    assert_decodes_or_refuses(data)


def _with_exif(fmt: str, orientation: int) -> tuple[bytes, int]:
    """A small image whose EXIF block holds an orientation, a text tag and a sub-IFD; and where
    that block starts in the file."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Camera"
    exif[0x8769] = {0x9003: "2020:01:01 00:00:00"}
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 30)).save(buffer, fmt, exif=exif.tobytes())
    data = buffer.getvalue()
    marker = {"JPEG": b"Exif\x00\x00", "PNG": b"eXIf", "WEBP": b"EXIF", "TIFF": b""}[fmt]
    return data, data.find(marker)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(["JPEG", "PNG", "WEBP", "TIFF"]),
    orientation=st.integers(1, 8),
    edits=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_damaged_exif_blocks_decode_or_get_a_documented_error(fmt, orientation, edits):
    # Pillow raises SyntaxError, struct.error or TypeError on some damaged EXIF blocks: they must
    # not escape as 500s (a WebP whose EXIF header was damaged once did)
    data, start = _with_exif(fmt, orientation)
    damaged = bytearray(data)
    for offset, value in edits:
        if start + offset < len(damaged):
            damaged[start + offset] = value
    assert_decodes_or_refuses(bytes(damaged))


@pytest.fixture(scope="module")
def client(fuzzed_app):
    app, root = fuzzed_app
    with TestClient(create_app(app.state.settings)) as client:
        wait_until(lambda: client.get("/health/ready").status_code == 200)
        yield client, root


def assert_documented(response, root) -> None:
    assert response.status_code == 200 or response.status_code in DOCUMENTED_4XX, response.text[:500]
    assert_no_leak(response.text, root)
    if response.status_code != 200:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    files=st.lists(st.one_of(mutated_files(), st.binary(max_size=512)), min_size=1, max_size=4),
    model=st.sampled_from(["grey", "colors"]),
    as_json=st.booleans(),
)
def test_mutated_files_through_predict_get_200_or_a_documented_error(client, files, model, as_json):
    http, root = client
    if as_json:
        instances = [{"b64": base64.b64encode(data).decode()} for data in files]
        response = http.post(f"/models/{model}/predict", json={"instances": instances})
    else:
        response = http.post(f"/models/{model}/predict", files=[("file", (f"{i}.img", d)) for i, d in enumerate(files)])
    assert_documented(response, root)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=9) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=80,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(instances=json_values, extra=st.dictionaries(st.sampled_from(["top_k", "version", "model"]), json_values))
def test_arbitrary_json_instances_get_200_or_a_documented_error(client, instances, extra):
    http, root = client
    body = json.dumps({"instances": instances, **extra}, allow_nan=True)
    response = http.post("/predict?model=grey", content=body, headers={"content-type": "application/json"})
    if response.status_code == 404:  # a version (or model) the body names that the store lacks: documented
        assert {"version", "model"} & set(extra), response.text
        assert response.json()["error"]["code"] in {"version_not_found", "model_not_found"}, response.text
        return
    assert_documented(response, root)


@pytest.mark.parametrize("depth", [31, 33, 200, 5000])
def test_deeply_nested_pixel_arrays_get_422(client, depth):
    http, root = client
    body = "[" * depth + "1" + "]" * depth
    response = http.post(
        "/models/grey/predict", content=f'{{"instances": {body}}}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text[:300]
    assert_documented(response, root)


@pytest.mark.parametrize(
    ("value", "label"),
    [(0, "dark"), (255, "bright"), (0.5, "dark"), (254.999, "bright"), (-0.0, "dark"), (1e-300, "dark"),
     (127, "dark"), (128, "bright")],
)  # fmt: skip
def test_pixel_grid_of_the_right_shape_with_odd_numbers(client, value, label):
    """Any number within [0, 255] is a valid pixel: 200, and the answer follows the value."""
    http, root = client
    response = http.post("/models/grey/predict", json={"instances": [[[value] * 8] * 8]})
    assert response.status_code == 200, response.text[:500]
    assert_no_leak(response.text, root)
    assert [p["label"] for p in response.json()["predictions"]] == [label]


@pytest.mark.parametrize("value", [True, False, 255.0001, -1, "7", None])
def test_pixel_grid_of_the_right_shape_with_invalid_values_gets_422(client, value):
    http, root = client
    response = http.post("/models/grey/predict", json={"instances": [[[value] * 8] * 8]})
    assert response.status_code == 422, response.text[:500]
    assert response.json()["error"]["code"] == "invalid_input"
    assert_documented(response, root)
