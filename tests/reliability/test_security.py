"""Security: the API key guards every route but live health, errors leak nothing, and a model
with code in it (a Lambda layer) is never loaded.

The routes are enumerated from the app itself, so a route added later is covered without
touching this file. (The fixed list of tests/service/test_security.py checks the messages.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import keras
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api.docs import DOCS_PATHS
from service.api.page import PAGE_PATHS
from service.inference import Classifier
from service.main import create_app
from service.predictor import Predictor
from tests.reliability.conftest import assert_no_leak, write_model
from tests.service.conftest import GREY_SPEC, grey_image, settings_for, wait_until

KEY = "k3y-for-tests"
# Open without the key: live health (probes), and the explorer page's own static files, which
# hold no data and must load before the page can ask for the key (service/api/page.py), and the
# API docs with their schema (service/api/docs.py).
OPEN_PATHS = (
    frozenset({"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"}) | PAGE_PATHS | DOCS_PATHS
)


def served_routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, path template) of every route, including those inside included routers and mounts."""

    def walk(routes, prefix: str = "") -> Iterator[tuple[str, str]]:
        for route in routes:
            if hasattr(route, "effective_route_contexts"):  # FastAPI >= 0.16x keeps included routers whole
                for context in route.effective_route_contexts():
                    for method in getattr(context.original_route, "methods", None) or ["GET"]:
                        yield method, prefix + context.path
            elif hasattr(route, "routes") and getattr(route, "path", None) is not None:  # a Mount
                yield from walk(route.routes, prefix + route.path)
            elif getattr(route, "path", None) is not None:
                for method in getattr(route, "methods", None) or ["GET"]:
                    yield method, prefix + route.path

    yield from walk(app.routes)


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path) or "/"


@pytest.fixture(scope="module")
def keyed(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("keyed-store")
    models.write(root, "grey", 1)
    app = create_app(settings_for(root, api_key=KEY))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_until(lambda: client.get("/health/ready", headers={"X-API-Key": KEY}).status_code == 200)
        yield app, client, root


def test_every_route_but_live_health_refuses_missing_or_wrong_keys(keyed):
    app, client, root = keyed
    routes = sorted(set(served_routes(app)))
    assert ("POST", "/models/{name}/predict") in routes and ("GET", "/metrics") in routes, routes
    assert len(routes) >= 12, routes
    wrong_keys = [None, "", "wrong", KEY.upper(), KEY + "x", KEY[:-1]]
    checked = 0
    for method, template in routes:
        path = concrete(template)
        if path in OPEN_PATHS:
            continue
        for key in wrong_keys:
            headers = {} if key is None else {"X-API-Key": key}
            response = client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, key, response.status_code)
            if method != "HEAD" and path.startswith("/v2"):  # the Open Inference Protocol's error body
                assert response.json() == {"error": "missing X-API-Key header" if not key else "wrong API key"}
            elif method != "HEAD":
                assert response.json()["error"]["code"] == "unauthorized"
                assert_no_leak(response.text, root)
                assert KEY not in response.text
        # and the right key does get through (whatever the route then says about "x1")
        assert client.request(method, path, headers={"X-API-Key": KEY}).status_code != 401, (method, path)
        checked += 1
    assert checked >= 10
    # what no route matches is refused too, before routing: no probing for routes without the key
    for method, path in [("GET", "/no/such/route"), ("OPTIONS", "/models"), ("DELETE", "/models/grey")]:
        assert client.request(method, path).status_code == 401, (method, path)
    assert client.get("/health/live").status_code == 200


def test_made_up_methods_and_paths_cannot_grow_the_metrics(keyed):
    """Unauthenticated requests are counted too, so every label value must come from a bounded set."""
    app, client, _ = keyed

    def metrics() -> str:
        return client.get("/metrics", headers={"X-API-Key": KEY}).text

    for i in range(20):
        client.request(f"M{i}", f"/made/up/{i}")
    size = len(metrics())
    for i in range(20, 220):
        client.request(f"M{i}", f"/made/up/{i}?q={i}")
    text = metrics()
    assert len(text) <= size + 200, "label values grew with the requests: unbounded memory"
    templates = {path for _, path in served_routes(app)} | {"<unmatched>"}
    assert set(re.findall(r'route="([^"]*)"', text)) <= templates
    assert set(re.findall(r'method="([^"]*)"', text)) <= {
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
        "OPTIONS",
        "OTHER",
    }


def test_unexpected_failures_are_a_500_without_details(keyed, monkeypatch):
    _, client, root = keyed
    headers = {"X-API-Key": KEY}
    secret_detail = f"{root}/grey/1/model.keras line 7\nTraceback (most recent call last):"

    def failing_model(self, batch):
        raise RuntimeError(secret_detail)

    monkeypatch.setattr(Classifier, "__call__", failing_model)
    response = client.post("/models/grey/predict", files={"file": ("a.png", grey_image(3))}, headers=headers)
    assert response.status_code == 500 and response.json()["error"]["code"] == "inference_failed"
    assert_no_leak(response.text, root)
    monkeypatch.undo()

    async def failing_predict(self, *args, **kwargs):
        raise OSError(secret_detail)

    monkeypatch.setattr(Predictor, "predict", failing_predict)
    response = client.post("/models/grey/predict", files={"file": ("a.png", grey_image(3))}, headers=headers)
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
    assert_no_leak(response.text, root)
    monkeypatch.undo()

    response = client.post("/models/grey/predict", files={"file": ("a.png", grey_image(3))}, headers=headers)
    assert response.status_code == 200, "the server recovers"


def build_lambda_model(marker) -> keras.Model:
    """A model whose Lambda layer creates `marker` whenever its code runs (as it would on an unsafe load)."""
    code = eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")  # a constant path in the bytecode
    image = keras.Input(shape=GREY_SPEC.shape, name="image", dtype="float32")
    x = keras.layers.Lambda(code, name="payload")(image)
    x = keras.layers.Flatten(name="flatten")(x)
    out = keras.layers.Dense(2, activation="softmax", name="probabilities")(x)
    return keras.Model(image, out, name="evil")


def test_a_model_with_a_lambda_layer_is_refused_and_its_code_never_runs(models, tmp_path):
    root = tmp_path / "models"
    marker = tmp_path / "lambda-ran"
    models.write(root, "grey", 1)
    write_model(root, "evil", 1, build_lambda_model(marker), GREY_SPEC, ["dark", "bright"])
    marker.unlink()  # building the model ran the lambda once, here in the test
    with TestClient(create_app(settings_for(root))) as client:
        wait_until(lambda: all(m["state"] != "loading" for m in client.get("/models").json()["models"]))
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        evil = ready.json()["models"]["evil"]["versions"][0]
        assert evil["state"] == "failed"
        assert "Lambda" in evil["reason"]
        assert ready.json()["models"]["grey"]["state"] == "ready"
        refused = client.post("/models/evil/predict", json={"instances": [np.zeros((8, 8)).tolist()]})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_not_ready"
        served = client.post("/models/grey/predict", files={"file": ("a.png", grey_image(250))})
        assert served.status_code == 200 and served.json()["predictions"][0]["label"] == "bright"
        for response in (ready, refused, served, client.get("/models")):
            assert_no_leak(response.text, root, tmp_path)
    assert not marker.exists(), "the Lambda's code ran inside the server"
