"""Files found by mutating valid images that made Pillow raise something other than its usual errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.service.conftest import grey_image, settings_for, wait_ready

MALFORMED = Path(__file__).parents[1] / "data" / "malformed"


@pytest.fixture(scope="module")
def client(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    models.write(root, "grey", 1)
    with TestClient(create_app(settings_for(root)), raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


def test_a_tiff_whose_strip_offset_is_not_an_integer_is_a_bad_file(client):
    # Pillow's TIFF loader raises TypeError on it while decoding: the file's fault, a 400
    data = (MALFORMED / "tiff-float-strip-offset.tif").read_bytes()
    response = client.post("/models/grey/predict", files={"file": ("a.tif", data)})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_image"
    assert client.post("/models/grey/predict", files={"file": ("b.png", grey_image(3))}).status_code == 200
