"""API key and CORS."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.main import create_app
from tests.service.conftest import grey_image, settings_for, wait_ready, wait_until


def test_api_key_protects_every_route_but_live_health(models, tmp_path):
    models.write(tmp_path, "grey", 1)
    with TestClient(create_app(settings_for(tmp_path, api_key="s3cret"))) as client:
        assert client.get("/health/live").status_code == 200
        wait_until(lambda: client.get("/health/ready").status_code == 200)  # probes send no header
        assert client.get("/openapi.json").status_code == 200  # public, like the docs pages (issue 17)
        for method, path in [
            ("GET", "/models"),
            ("GET", "/models/grey"),
            ("GET", "/metrics"),
            ("POST", "/models/grey/predict"),
            ("POST", "/predict?model=grey"),
        ]:
            response = client.request(method, path)
            assert response.status_code == 401, path
            assert response.json()["error"]["code"] == "unauthorized"
            wrong = client.request(method, path, headers={"X-API-Key": "guess"})
            assert wrong.status_code == 401 and "wrong" in wrong.json()["error"]["message"]
        keyed = {"X-API-Key": "s3cret"}
        client.headers.update(keyed)
        wait_ready(client)
        response = client.post("/models/grey/predict", files={"file": ("a.png", grey_image(255))})
        assert response.status_code == 200 and response.json()["predictions"][0]["label"] == "bright"
        assert "s3cret" not in client.get("/metrics").text


def test_cors_is_closed_by_default(models, tmp_path):
    models.write(tmp_path, "grey", 1)
    with TestClient(create_app(settings_for(tmp_path))) as client:
        response = client.get("/models", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in response.headers
        preflight = client.options(
            "/models/grey/predict",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in preflight.headers


def test_cors_allows_configured_origins_even_with_an_api_key(models, tmp_path):
    models.write(tmp_path, "grey", 1)
    settings = settings_for(tmp_path, cors_origins="https://app.example", api_key="k")
    with TestClient(create_app(settings)) as client:
        preflight = client.options(
            "/models/grey/predict",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        other = client.get("/health/live", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        allowed = client.get("/models", headers={"Origin": "https://app.example", "X-API-Key": "k"})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
