"""The explorer page in headless Chromium (Debian's `chromium`, driven by Playwright for Python).

A real uvicorn serves a temporary model store on 127.0.0.1, from a thread of the test process:
- `digits`: 28x28 grayscale, Conv2D `conv1` -> Flatten -> Dense `probabilities`, classes 0-9,
  hand-set to match templates: "0" is an upright ring around the centre, "1" a vertical bar
  through the centre column (so a drawn "1" is only recognised once it is centred like MNIST);
- `colors`: the 8x8 RGB model of tests/service (the strongest channel wins).

Nothing is downloaded: the browser is the system's (`apt-get install chromium`), never
`playwright install`. The tests skip, saying why, when no browser can be found or launched.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import keras
import numpy as np
import pytest
import uvicorn

from modelcard import InputSpec
from service.main import create_app
from tests.service.conftest import ModelFactory, settings_for

DIGITS_SPEC = InputSpec(height=28, width=28, channels=1, color_mode="grayscale")
API_KEY = "page-test-key"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def digit_templates() -> dict[int, np.ndarray]:
    """Where each recognised digit has ink, on the 28x28 field (pixel centres at i + 0.5)."""
    y, x = np.mgrid[0:28, 0:28] + 0.5
    bar = (np.abs(x - 14) <= 2) & (y >= 3) & (y <= 25)
    radius = np.sqrt(((x - 14) / 7) ** 2 + ((y - 14) / 10) ** 2)
    ring = (radius >= 0.6) & (radius <= 1.4)
    return {0: ring, 1: bar}


def build_digits_model() -> keras.Model:
    image = keras.Input(shape=DIGITS_SPEC.shape, name="image", dtype="float32")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(image)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    out = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    model = keras.Model(image, out, name="digits")
    kernels = np.zeros((3, 3, 1, 4), np.float32)
    kernels[:, :, 0, 0] = 1 / 9  # a local mean: the only channel the classifier reads
    kernels[:, :, 0, 1] = [[-1, 0, 1]] * 3  # vertical edges
    kernels[:, :, 0, 2] = np.array([[-1, 0, 1]] * 3).T  # horizontal edges
    kernels[1, 1, 0, 3] = 1  # identity
    model.get_layer("conv1").set_weights([kernels, np.zeros(4, np.float32)])
    # a digit's logit: 0.15 x (ink inside its template - ink outside); other digits stay at 0
    weights = np.zeros((28, 28, 4, 10), np.float32)
    for digit, template in digit_templates().items():
        weights[:, :, 0, digit] = np.where(template, 0.15, -0.15)
    model.get_layer("probabilities").set_weights([weights.reshape(-1, 10), np.zeros(10, np.float32)])
    return model


class PageModels(ModelFactory):
    builders = {
        **ModelFactory.builders,
        "digits": (build_digits_model, DIGITS_SPEC, [str(d) for d in range(10)]),
    }


class LiveServer:
    """uvicorn serving `app` on a free 127.0.0.1 port, in a thread; ready once the models are."""

    def __init__(self, app, api_key: str | None = None) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.api_key = api_key
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/health/ready", headers=headers, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__()
                pytest.fail("the page test server did not become ready")
            time.sleep(0.1)

    def __exit__(self, *exc_info) -> None:
        self._server.should_exit = True
        self._thread.join(30)
        self._socket.close()


@pytest.fixture(scope="session")
def page_models(tmp_path_factory: pytest.TempPathFactory) -> PageModels:
    return PageModels(tmp_path_factory.mktemp("page-models"))


@pytest.fixture(scope="session")
def page_store(page_models: PageModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("page-store")
    page_models.write(root, "digits", 1)
    page_models.write(root, "colors", 1)
    return root


def _serve(store: Path, **overrides) -> LiveServer:
    settings = settings_for(store, tf_intra_op_threads=1, tf_inter_op_threads=1, **overrides)
    return LiveServer(create_app(settings), overrides.get("api_key"))


@pytest.fixture(scope="session")
def live_server(page_store: Path) -> Iterator[LiveServer]:
    with _serve(page_store) as server:
        yield server


@pytest.fixture(scope="session")
def keyed_server(page_store: Path) -> Iterator[LiveServer]:
    with _serve(page_store, api_key=API_KEY) as server:
        yield server


def find_chromium() -> str | None:
    candidates = [os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium"]
    candidates += [shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")]
    return next((path for path in candidates if path and os.access(path, os.X_OK)), None)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory):
    """One headless Chromium with a fresh profile; each test opens its own pages (own sessionStorage).

    Module-scoped: Playwright's sync API runs an event loop on this thread while it is open,
    and later test modules (asyncio.run in the client tests) need that loop gone."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no browser driver: `pip install playwright` (the browser itself comes from apt: chromium)")
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found: `apt-get install -y chromium` (or set CHROMIUM_PATH)")
    with sync_playwright() as playwright:
        try:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path_factory.mktemp("chromium-profile")),
                executable_path=executable,
                args=CHROMIUM_ARGS,
                headless=True,
                timeout=60_000,
            )
        except PlaywrightError as error:
            pytest.skip(f"Chromium at {executable} could not be launched: {str(error).splitlines()[0]}")
        try:
            yield context
        finally:
            context.close()
