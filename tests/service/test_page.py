"""The explorer page's files, served by the app (no browser here: see tests/browser)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib.resources import files

import pytest
from fastapi.testclient import TestClient

from service.api.page import PAGE_PATHS
from service.main import create_app
from tests.service.conftest import settings_for

STATIC = ("index.html", "app.js", "style.css")


@pytest.fixture(scope="module")
def client(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    models.write(root, "grey", 1)
    with TestClient(create_app(settings_for(root))) as client:
        yield client


class Controls(HTMLParser):
    """Form controls and canvases, and which ids have a <label for=...>."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.labelled: set[str] = set()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag in ("input", "select", "textarea", "canvas"):
            self.controls.append({"tag": tag, **attributes})
        if tag == "label" and attributes.get("for"):
            self.labelled.add(attributes["for"])
        for name in ("src", "href"):
            if attributes.get(name) and tag in ("script", "link", "img", "a"):
                self.sources.append(attributes[name])


def test_the_page_is_served_at_the_root_with_its_assets(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    html = page.text
    assert '<script src="static/app.js" defer></script>' in html
    assert '<link rel="stylesheet" href="static/style.css">' in html
    for path, kind in [("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")]:
        asset = client.get(path)
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind), path
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert client.get(path, headers={"If-None-Match": asset.headers["etag"]}).status_code == 304


def test_unknown_static_files_are_a_json_404(client):
    for path in ("/static/nope.js", "/static/..%2Fmain.py", "/static/index.html"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert set(response.json()["error"]) == {"code", "message"}


def test_the_page_is_not_part_of_the_api_schema(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(path.startswith("/static") for path in paths)


def test_every_control_is_labelled_and_nothing_comes_from_another_origin():
    html = files("service").joinpath("static", "index.html").read_text()
    parsed = Controls()
    parsed.feed(html)
    assert parsed.controls
    for control in parsed.controls:
        named = control.get("id") in parsed.labelled or control.get("aria-label") or control.get("aria-labelledby")
        assert named, f"unlabelled {control}"
    assert all("//" not in source for source in parsed.sources), parsed.sources
    for name in STATIC:
        text = files("service").joinpath("static", name).read_text()
        assert not re.search(r"https?://|//cdn|@import", text), name


def test_static_files_are_package_data():
    # pyproject ships `service/static/*`: the page's files must be found through the package,
    # flat in that folder, for a non-editable install to serve them
    folder = files("service").joinpath("static")
    shipped = sorted(entry.name for entry in folder.iterdir())
    assert shipped == sorted(STATIC)
    assert all(folder.joinpath(name).is_file() for name in shipped)
    assert {"/", "/static/app.js", "/static/style.css"} == PAGE_PATHS


def test_with_an_api_key_the_page_loads_but_the_api_still_needs_the_key(models, tmp_path):
    models.write(tmp_path, "grey", 1)
    with TestClient(create_app(settings_for(tmp_path, api_key="s3cret"))) as client:
        for path in sorted(PAGE_PATHS):
            assert client.get(path).status_code == 200, path
        assert client.get("/models").status_code == 401
        assert client.get("/static/nope.js").status_code == 401  # only the page's own files are open
        assert client.get("/models", headers={"X-API-Key": "s3cret"}).status_code == 200
