"""The explorer page at `/`, driven in headless Chromium against a real uvicorn."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.browser.conftest import API_KEY, LiveServer

pytestmark = pytest.mark.slow

TIMEOUT_MS = 30_000  # the machine may be busy: generous, only spent on failure
SHARED_SCREENSHOT = Path("/tmp/page-screenshot.png")


def ring_png(size: int = 112) -> bytes:
    """A "0": an upright white ring on black, larger than the model's input (the server resizes it)."""
    image = Image.new("L", (size, size), 0)
    s = size / 28
    ImageDraw.Draw(image).ellipse([7 * s, 4 * s, 21 * s, 24 * s], outline=255, width=int(3 * s))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def solid_png(rgb: tuple[int, int, int], size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, "PNG")
    return buffer.getvalue()


class Explorer:
    """One browser tab on the page, with the steps the tests share."""

    def __init__(self, context, server: LiveServer, width: int = 1280, height: int = 900) -> None:
        from playwright.sync_api import expect

        self.expect = expect
        self.page = context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.set_viewport_size({"width": width, "height": height})
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.server = server

    def open(self, fragment: str = "") -> Explorer:
        self.page.goto(f"{self.server.url}/{fragment}")
        return self

    def choose(self, model: str) -> None:
        self.expect(self.page.locator("#model")).to_be_enabled(timeout=TIMEOUT_MS)
        self.page.select_option("#model", model)

    def upload(self, path: Path) -> None:
        self.page.set_input_files("#file", str(path))  # the page predicts as soon as a file is chosen

    def expect_top(self, label: str, classes: int) -> None:
        self.expect(self.page.locator("#bars li")).to_have_count(classes, timeout=TIMEOUT_MS)
        self.expect(self.page.locator("#top-label")).to_have_text(label, timeout=TIMEOUT_MS)

    def wait_image(self, element_id: str, layer: str | None = None) -> dict:
        """Wait until the <img> shows a decoded picture; returns its natural size."""
        check = "i.dataset.layer === layer" if layer else "true"
        self.page.wait_for_function(
            f"""([id, layer]) => {{
                const i = document.getElementById(id);
                return i && !i.hidden && i.complete && i.naturalWidth > 0 && {check};
            }}""",
            arg=[element_id, layer],
            timeout=TIMEOUT_MS,
        )
        return self.page.eval_on_selector(f"#{element_id}", "i => ({width: i.naturalWidth, height: i.naturalHeight})")

    def screenshot(self, path: Path) -> Path:
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.page.close()
        assert not self.errors, f"JavaScript errors on the page: {self.errors}"


@pytest.fixture
def explorer(browser_context, live_server):
    tab = Explorer(browser_context, live_server)
    yield tab
    tab.close()


def test_upload_shows_bars_activation_grid_kernels_and_gradcam(explorer, tmp_path):
    sample = tmp_path / "zero.png"
    sample.write_bytes(ring_png())
    explorer.open().choose("digits")
    explorer.upload(sample)

    explorer.expect_top("0", classes=10)
    page = explorer.page
    assert page.locator("#bars li.is-top").get_attribute("data-label") == "0"
    width = page.eval_on_selector("#bars li.is-top .bar-fill", "e => e.getBoundingClientRect().width")
    track = page.eval_on_selector("#bars li.is-top .bar-track", "e => e.getBoundingClientRect().width")
    assert width > 0.95 * track  # the winning bar is (nearly) full
    assert explorer.wait_image("activation-img", layer="conv1")["width"] > 28  # 4 feature maps, tiled
    explorer.wait_image("kernels-img")
    explorer.wait_image("gradcam-img")
    assert page.locator("#layer-buttons [aria-pressed=true]").inner_text().startswith("conv1")

    # another layer, with the keyboard: the grid is the server's PNG, or drawn from values if not spatial
    page.locator("#layer-buttons button[data-layer=rescale]").focus()
    page.keyboard.press("Enter")
    explorer.wait_image("activation-img", layer="rescale")
    page.locator("#layer-buttons button[data-layer=probabilities]").click()
    explorer.wait_image("activation-img", layer="probabilities")
    assert "10 values" in page.inner_text("#activation-caption")
    explorer.screenshot(tmp_path / "explorer-upload.png")

    # the prediction's permalink fetches the same views again, in a new tab
    link = page.get_attribute("#permalink", "href")
    prediction_id = page.inner_text("#permalink")
    assert link.startswith("#id=") and prediction_id in link
    again = Explorer(page.context, explorer.server).open(link)
    try:
        again.expect_top("0", classes=10)
        again.wait_image("activation-img", layer="conv1")
        again.wait_image("gradcam-img")
        assert again.page.inner_text("#permalink") == prediction_id
    finally:
        again.close()


def seen_pixels(page) -> np.ndarray:
    values = page.evaluate(
        """() => Array.from(document.getElementById('seen').getContext('2d')
                 .getImageData(0, 0, 28, 28).data.filter((_, i) => i % 4 === 0))"""
    )
    return np.array(values, np.float64).reshape(28, 28)


def test_drawn_digit_is_sent_like_mnist_and_predicted(explorer, tmp_path):
    explorer.open().choose("digits")
    page = explorer.page
    explorer.expect(page.locator("#draw-panel")).to_be_visible()
    # a "1" well left of centre: recognised only if the page crops, scales and centres it
    box = page.locator("#pad").bounding_box()
    x = box["x"] + 0.25 * box["width"]
    page.mouse.move(x, box["y"] + 0.25 * box["height"])
    page.mouse.down()
    page.mouse.move(x + 3, box["y"] + 0.75 * box["height"], steps=12)
    page.mouse.up()
    page.click("#draw-predict")

    explorer.expect_top("1", classes=10)
    explorer.wait_image("activation-img", layer="conv1")
    explorer.wait_image("kernels-img")
    explorer.wait_image("gradcam-img")

    seen = seen_pixels(page)
    rows, columns = np.nonzero(seen)
    assert rows.max() - rows.min() + 1 == 20  # the long side fits the 20x20 box
    assert columns.max() - columns.min() + 1 <= 20
    y, x = np.mgrid[0:28, 0:28] + 0.5
    mass = seen.sum()
    assert abs((seen * x).sum() / mass - 14) <= 0.5 and abs((seen * y).sum() / mass - 14) <= 0.5
    assert page.locator("#history li").count() == 1

    shot = explorer.screenshot(tmp_path / "explorer-drawing.png")
    shutil.copy(shot, SHARED_SCREENSHOT)


def test_drawing_with_the_keyboard(explorer):
    explorer.open().choose("digits")
    page = explorer.page
    page.focus("#pad")
    page.keyboard.press("Space")  # pen down at the centre
    for _ in range(8):
        page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    explorer.expect_top("1", classes=10)


def test_rgb_model_and_api_errors_as_text(explorer, tmp_path):
    green = tmp_path / "green.png"
    green.write_bytes(solid_png((0, 200, 0)))
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"this is not an image")
    explorer.open().choose("colors")
    page = explorer.page
    explorer.expect(page.locator("#draw-panel")).to_be_hidden()  # drawing is for 28x28 grayscale models

    explorer.upload(green)
    explorer.expect_top("green", classes=3)
    explorer.wait_image("activation-img", layer="rescale")  # no conv layer: the first spatial one
    explorer.expect(page.locator("#kernels-caption")).to_contain_text("no convolution layer")

    explorer.upload(not_an_image)
    error = page.locator("#error")
    explorer.expect(error).to_be_visible(timeout=TIMEOUT_MS)
    text = error.inner_text()
    assert text.startswith("Error: ") and "HTTP 400" in text and "invalid_image" in text
    assert "{" not in text  # the message, not the JSON body


def test_readable_at_375_pixels_without_horizontal_overflow(browser_context, live_server, tmp_path):
    sample = tmp_path / "zero.png"
    sample.write_bytes(ring_png())
    tab = Explorer(browser_context, live_server, width=375, height=812)
    try:
        tab.open().choose("digits")
        tab.upload(sample)
        tab.expect_top("0", classes=10)
        tab.wait_image("activation-img", layer="conv1")
        tab.wait_image("kernels-img")
        tab.wait_image("gradcam-img")
        overflow = tab.page.evaluate(
            """() => {
                const width = document.documentElement.clientWidth;
                const wide = [...document.querySelectorAll('body *')]
                    .filter(e => e.getClientRects().length && e.getBoundingClientRect().right > width + 0.5)
                    .map(e => e.id || e.className || e.tagName);
                return {scroll: document.documentElement.scrollWidth, width, wide};
            }"""
        )
        assert overflow["scroll"] <= overflow["width"] == 375, overflow
        assert overflow["wide"] == [], overflow
        font_size = tab.page.eval_on_selector("body", "e => parseFloat(getComputedStyle(e).fontSize)")
        assert font_size >= 16
        tab.screenshot(tmp_path / "explorer-375.png")
    finally:
        tab.close()


def test_asks_for_the_api_key_and_sends_it(browser_context, keyed_server, tmp_path):
    sample = tmp_path / "zero.png"
    sample.write_bytes(ring_png())
    tab = Explorer(browser_context, keyed_server)
    try:
        page = tab.open().page  # the page itself loads without the key
        key_panel = page.locator("#key-panel")
        tab.expect(key_panel).to_be_visible(timeout=TIMEOUT_MS)
        tab.expect(page.locator("#api-key")).to_be_focused()
        page.fill("#api-key", "guess")
        page.press("#api-key", "Enter")
        tab.expect(page.locator("#key-reason")).to_contain_text("wrong API key", timeout=TIMEOUT_MS)
        page.fill("#api-key", API_KEY)
        page.click("#key-form button[type=submit]")
        tab.expect(key_panel).to_be_hidden()
        tab.choose("digits")
        tab.upload(sample)
        tab.expect_top("0", classes=10)
        tab.wait_image("activation-img", layer="conv1")
        tab.wait_image("kernels-img")
        tab.wait_image("gradcam-img")
        assert page.evaluate("() => sessionStorage.getItem('keras-serve.api-key')") == API_KEY
    finally:
        tab.close()
