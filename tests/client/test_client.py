"""The Python client against a real service, plus retries against a scripted transport."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from service.client import (
    AsyncClient,
    BadRequest,
    Client,
    GatewayError,
    InvalidInput,
    NotFound,
    PredictResult,
    ServiceConnectionError,
    Unauthorized,
    Unavailable,
)
from service.client.api import RetryPolicy, ServiceError, _Attempts, _Call, _Done, _Wait
from service.client.payloads import build_body
from tests.client.conftest import BRIGHT, DARK, ROOT, png_bytes


def test_importing_the_client_does_not_import_tensorflow():
    code = (
        "import sys, service.client, service.client.score; "
        "heavy = [m for m in ('tensorflow', 'keras', 'fastapi') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_predict_accepts_paths_bytes_pil_and_arrays(server_url, tmp_path):
    path = tmp_path / "dark.png"
    path.write_bytes(png_bytes(DARK))
    images = [
        path,
        str(path),
        png_bytes(BRIGHT),
        Image.new("L", (8, 8), BRIGHT),
        np.full((8, 8), DARK, np.uint8),
        np.full((16, 16, 3), BRIGHT, np.uint8),  # any size, any colour mode: the service converts
    ]
    with Client(server_url) as client:
        result = client.predict("grey", images, top_k=1)
        floats = client.predict("grey", np.stack([np.full((8, 8, 1), v, np.float32) for v in (DARK, BRIGHT)]))
        single = client.predict("grey", png_bytes(BRIGHT))
    assert isinstance(result, PredictResult)
    assert (result.model, result.version) == ("grey", 1)
    assert [p.label for p in result.predictions] == ["dark", "dark", "bright", "bright", "dark", "bright"]
    first = result.predictions[0]
    assert first.index == 0 and first.confidence > 0.99 and first.id
    assert set(first.probabilities) == {"dark", "bright"}
    assert [(s.label, s.index) for s in first.top_k] == [("dark", 0)]
    assert [p.label for p in floats.predictions] == ["dark", "bright"]
    assert len(floats.predictions[0].top_k) == 2  # the service's default k, capped at the class count
    assert [p.label for p in single.predictions] == ["bright"]


def test_float_arrays_go_as_json_instances_and_do_not_mix_with_files():
    body = build_body([np.zeros((2, 2, 1), np.float32)])
    assert body.content is None and body.json == {"instances": [[[[0.0], [0.0]], [[0.0], [0.0]]]]}
    assert len(build_body(np.zeros((3, 2, 2, 1), np.float64)).json["instances"]) == 3
    uint8 = build_body(np.zeros((3, 2, 2, 1), np.uint8))  # a batch of three 2x2 PNGs (3-D is one image)
    assert uint8.content.count(b"\x89PNG") == 3
    assert uint8.content_type.startswith("multipart/form-data; boundary=")
    with pytest.raises(ValueError, match="cannot share"):
        build_body([np.zeros((2, 2), np.float32), b"png"])
    with pytest.raises(TypeError):
        build_body([12])


def test_file_parts_carry_the_content_type_of_their_suffix(tmp_path):
    for name, expected in [("a.JPG", "image/jpeg"), ("b.webp", "image/webp"), ("c.tif", "image/tiff"), ("d", None)]:
        (tmp_path / name).write_bytes(b"x")
        body = build_body(tmp_path / name)
        assert f"Content-Type: {expected or 'application/octet-stream'}\r\n".encode() in body.content


def test_sync_and_async_clients_give_the_same_answers(server_url):
    images = [png_bytes(v) for v in (0, DARK, 120, 135, BRIGHT, 255)]

    def comparable(result: PredictResult):
        return [(p.label, p.index, p.confidence, p.probabilities, p.top_k) for p in result.predictions]

    with Client(server_url) as client:
        sync = (client.models(), client.model("colors"), client.predict("grey", images, top_k=2))

    async def run_async():
        async with AsyncClient(server_url) as client:
            return await asyncio.gather(
                client.models(), client.model("colors"), client.predict("grey", images, top_k=2)
            )

    models, model, result = asyncio.run(run_async())
    assert [(m.name, m.versions, m.class_names, m.input) for m in models] == [
        (m.name, m.versions, m.class_names, m.input) for m in sync[0]
    ]
    assert {m.name for m in models} == {"grey", "colors"}
    assert (model.class_names, model.layer_names) == (sync[1].class_names, sync[1].layer_names)
    assert model.class_names == ["red", "green", "blue"] and "probabilities" in model.layer_names
    assert comparable(result) == comparable(sync[2])
    assert [p.label for p in result.predictions] == ["dark", "dark", "dark", "bright", "bright", "bright"]


def test_errors_are_typed_with_the_service_code_and_status(server_url):
    with Client(server_url, retries=0) as client:
        with pytest.raises(NotFound) as missing:
            client.predict("no-such-model", png_bytes(DARK))
        with pytest.raises(BadRequest) as corrupt:
            client.predict("grey", b"\x89PNG\r\n\x1a\n this is not a png")
        with pytest.raises(InvalidInput) as shape:
            client.predict("grey", np.zeros((5, 5, 1), np.float32))
        health = client.health()
    assert (missing.value.status_code, missing.value.code) == (404, "model_not_found")
    assert (corrupt.value.status_code, corrupt.value.code) == (400, "invalid_image")
    assert shape.value.status_code == 422 and "shape" in shape.value.message
    assert health.ready and set(health.models) == {"grey", "colors"}


def test_activations_come_back_as_arrays(server_url):
    with Client(server_url) as client:
        prediction = client.predict("grey", png_bytes(BRIGHT)).predictions[0]
        try:
            npz = client.activations(prediction.id, layers=["conv1", "probabilities"])
        except NotFound as exc:
            if exc.code == "not_found" and exc.message.startswith("no route"):
                pytest.skip("the service has no activations API yet")
            raise
        as_json = client.activations(prediction.id, layers="conv1,probabilities", format="json")
    assert set(npz) == {"conv1", "probabilities"}
    probabilities = np.asarray([prediction.probabilities[c] for c in ("dark", "bright")], np.float32)
    np.testing.assert_allclose(npz["probabilities"].reshape(-1), probabilities, atol=1e-6)
    for name in npz:
        np.testing.assert_array_equal(npz[name], as_json[name])


# --------------------------------------------------------------------------- retries (scripted transport)

OK_BODY = {
    "model": "grey",
    "version": 1,
    "predictions": [
        {
            "id": "abc",
            "label": "dark",
            "index": 0,
            "confidence": 0.9,
            "probabilities": {"dark": 0.9, "bright": 0.1},
            "top_k": [{"label": "dark", "index": 0, "confidence": 0.9}],
        }
    ],
}


def _busy(retry_after: str | None = "1") -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = {"error": {"code": "queue_full", "message": "queue full; retry later"}}
    return httpx.Response(503, json=body, headers=headers)


class Script:
    """Answers requests from a list (responses or exceptions to raise), counting attempts."""

    def __init__(self, *steps) -> None:
        self.steps = list(steps)
        self.attempts = 0
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        self.bodies.append(request.read())
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, Exception):
            raise step
        return step


def test_the_core_decides_each_step_without_io():
    """`_Attempts` alone: replies in, decisions out (done, wait so long, or the typed error)."""
    call = _Call("GET", "/models", lambda response: response.json())
    attempts = _Attempts(call, RetryPolicy(retries=2, backoff=1.0, max_backoff=1.5))
    assert (attempts.request.method, attempts.request.path) == ("GET", "/models")
    assert attempts.after(_busy("7")) == _Wait(7.0)  # the server's Retry-After, as sent
    first = attempts.after(httpx.ConnectError("refused"))  # backoff: 2 ** 1 s capped at 1.5, with jitter
    assert isinstance(first, _Wait) and 0.75 <= first.seconds <= 1.5
    with pytest.raises(ServiceConnectionError) as spent:  # no retry left
        attempts.after(httpx.ConnectError("refused again"))
    assert isinstance(spent.value.__cause__, httpx.ConnectError)
    assert _Attempts(call, RetryPolicy()).after(httpx.Response(200, json=[1])) == _Done([1])
    with pytest.raises(BadRequest):  # a client error is never retried
        _Attempts(call, RetryPolicy()).after(httpx.Response(400, json={"error": {"code": "x", "message": "y"}}))
    health = _Call("GET", "/health/ready", lambda response: response.status_code, accept=frozenset({503}))
    assert _Attempts(health, RetryPolicy()).after(_busy()) == _Done(503)  # an answer here, not an error


def test_retries_503_honouring_retry_after():
    script = Script(_busy("1"), httpx.Response(200, json=OK_BODY))
    with Client("http://service", transport=httpx.MockTransport(script), backoff=0.01) as client:
        started = time.monotonic()
        result = client.predict("grey", png_bytes(DARK))
        waited = time.monotonic() - started
    assert script.attempts == 2 and result.predictions[0].label == "dark"
    assert waited >= 0.95  # Retry-After: 1 honoured, not the 10 ms backoff
    assert all(png_bytes(DARK) in body for body in script.bodies)  # the same image sent again


def test_async_client_retries_429_503_and_connection_errors_with_backoff():
    script = Script(
        httpx.ConnectError("refused"),
        httpx.Response(429, json={"error": {"code": "too_many_requests", "message": "slow down"}}),
        _busy(None),
        httpx.Response(200, json=OK_BODY),
    )

    async def run():
        async with AsyncClient("http://service", transport=httpx.MockTransport(script), backoff=0.01) as client:
            return await client.predict("grey", png_bytes(DARK), top_k=1)

    assert asyncio.run(run()).predictions[0].id == "abc"
    assert script.attempts == 4


def test_retries_are_bounded_and_can_be_disabled():
    script = Script(_busy("0"))
    client = Client("http://service", transport=httpx.MockTransport(script), retries=2, backoff=0.01)
    with client, pytest.raises(Unavailable) as busy:
        client.predict("grey", png_bytes(DARK))
    assert script.attempts == 3
    assert (busy.value.status_code, busy.value.code, busy.value.retry_after) == (503, "queue_full", 0.0)

    script = Script(_busy("5"))
    client = Client("http://service", transport=httpx.MockTransport(script), retries=0)
    with client, pytest.raises(Unavailable):
        client.predict("grey", png_bytes(DARK))
    assert script.attempts == 1

    script = Script(httpx.ConnectError("refused"))
    client = Client("http://service", transport=httpx.MockTransport(script), retries=1, backoff=0.01)
    with client, pytest.raises(ServiceConnectionError):
        client.models()
    assert script.attempts == 2


def test_client_errors_are_not_retried_and_the_api_key_is_sent():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("X-API-Key"))
        body = {"error": {"code": "unauthorized", "message": "missing or wrong X-API-Key"}}
        return httpx.Response(401, content=json.dumps(body), headers={"content-type": "application/json"})

    client = Client("http://service", api_key="s3cret", transport=httpx.MockTransport(handler))
    with client, pytest.raises(Unauthorized) as refused:
        client.models()
    assert seen == ["s3cret"]
    assert refused.value.code == "unauthorized" and refused.value.message == "missing or wrong X-API-Key"


def test_a_proxy_without_its_service_is_retried_then_a_gateway_error_not_a_server_error():
    # nginx in front of a service that died answers 502 (504 when it hangs): not the images' fault
    for status in (502, 504):
        script = Script(httpx.Response(status, text="<html>Bad Gateway</html>"))
        transport = httpx.MockTransport(script)
        with (
            Client("http://service", transport=transport, retries=2, backoff=0.01) as client,
            pytest.raises(GatewayError) as raised,
        ):
            client.predict("grey", png_bytes(DARK))
        assert script.attempts == 3 and raised.value.status_code == status
        recovered = Script(httpx.Response(status), httpx.Response(200, json=OK_BODY))
        with Client("http://service", transport=httpx.MockTransport(recovered), backoff=0.01) as client:
            assert client.predict("grey", png_bytes(DARK)).predictions


def test_an_answer_that_is_not_the_services_is_an_error_not_a_traceback():
    portal = Script(httpx.Response(200, text="<html>please log in</html>"))
    with (
        Client("http://service", transport=httpx.MockTransport(portal)) as client,
        pytest.raises(ServiceError) as raised,
    ):
        client.models()
    assert raised.value.code == "invalid_response" and "please log in" in raised.value.message


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://host", "http://", "service"])
def test_a_url_without_http_is_refused_at_once(url):
    with pytest.raises(ValueError, match="http://host:port"):
        Client(url)
