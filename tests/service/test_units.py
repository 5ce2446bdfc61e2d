"""The pure parts, without HTTP: batcher, input cache, image decoding, compiled inference."""

from __future__ import annotations

import asyncio
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from modelcard import InputSpec
from service.batching import Batcher
from service.errors import ImageTooLarge, InvalidImage, InvalidInput, ModelNotReady, QueueFull, UnsupportedFormat
from service.images import decode_image, pixels_to_input
from service.inference import Classifier, batch_buckets
from service.input_cache import InputCache
from tests.service.conftest import GREY_SPEC, RGB_SPEC, build_colors_model, build_grey_model, png

# ---------------------------------------------------------------------------- batcher


class CountingModel:
    """Stands in for a model: row i is input i's sum; remembers each call's batch size."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[int] = []
        self.gate = gate

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(len(batch))
        return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True)


def run(coroutine):
    return asyncio.run(coroutine)


def submit_each(model, arrays: list[np.ndarray], max_batch_size: int) -> list:
    """Each array submitted as its own request, all at once, through one batcher over `model`:
    each request's rows, or the exception it got."""

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(model, executor, max_batch_size=max_batch_size, max_wait_us=0, max_queue_size=64)
            batcher.start()
            results = await asyncio.gather(*(batcher.submit([array]) for array in arrays), return_exceptions=True)
            await batcher.close()
            return results

    return run(scenario())


def test_batcher_coalesces_concurrent_submissions_into_one_call():
    model = CountingModel()

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(model, executor, max_batch_size=16, max_wait_us=0, max_queue_size=64)
            batcher.start()
            results = await asyncio.gather(*(batcher.submit([np.full((2, 2), i, np.float32)]) for i in range(10)))
            await batcher.close()
            return results

    results = run(scenario())
    assert model.batches == [10]
    assert [float(r[0, 0]) for r in results] == [4.0 * i for i in range(10)]


def test_a_non_finite_row_fails_only_its_own_request():
    def model(batch: np.ndarray) -> np.ndarray:
        return np.where(batch == 3, np.nan, batch)  # the image 3 makes the model answer NaN

    results = submit_each(model, [np.full((2,), i, np.float32) for i in range(6)], max_batch_size=16)
    assert isinstance(results[3], ArithmeticError) and "non-finite" in str(results[3])
    assert [float(r[0, 0]) for i, r in enumerate(results) if i != 3] == [0.0, 1.0, 2.0, 4.0, 5.0]


def test_batcher_splits_at_max_batch_size_and_keeps_order():
    model = CountingModel()

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(model, executor, max_batch_size=4, max_wait_us=0, max_queue_size=64)
            batcher.start()
            out = await batcher.submit([np.full((1,), i, np.float32) for i in range(10)])
            await batcher.close()
            return out

    out = run(scenario())
    assert model.batches == [4, 4, 2]
    assert out[:, 0].tolist() == list(range(10))


def test_batcher_runs_calls_known_to_be_short_on_the_event_loop_and_long_ones_in_the_thread():
    loop_thread = threading.get_ident()
    calls: list[tuple[int, bool]] = []  # (batch size, on the event loop's thread)

    def model(batch: np.ndarray) -> np.ndarray:
        calls.append((len(batch), threading.get_ident() == loop_thread))
        if len(batch) > 1:
            threading.Event().wait(0.02)  # a long call: 20 ms
        return batch * 2

    async def scenario(inline_us: int) -> list[tuple[int, bool]]:
        calls.clear()
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(model, executor, max_batch_size=4, max_wait_us=0, max_queue_size=64, inline_us=inline_us)
            batcher.start()
            for _ in range(3):
                assert (await batcher.submit([np.ones(1, np.float32)]))[0, 0] == 2.0
                assert (await batcher.submit([np.ones(1, np.float32)] * 4)).shape == (4, 1)
            batcher.replace(model)  # another runtime: its calls are timed afresh
            await batcher.submit([np.ones(1, np.float32)])
            await batcher.close()
        return list(calls)

    # each size's first call goes to the thread and is timed; a short size then stays on the loop
    on_loop = run(scenario(inline_us=5_000))
    assert on_loop == [(1, False), (4, False), (1, True), (4, False), (1, True), (4, False), (1, False)]
    assert all(not inline for _, inline in run(scenario(inline_us=0)))  # 0: always the thread


def test_batcher_waits_for_company_only_under_load():
    model = CountingModel()

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(model, executor, max_batch_size=8, max_wait_us=200_000, max_queue_size=64)
            batcher.start()
            loop = asyncio.get_running_loop()
            started = loop.time()
            await batcher.submit([np.ones(1, np.float32)])  # idle server: must not wait 200 ms
            alone = loop.time() - started
            await asyncio.gather(*(batcher.submit([np.ones(1, np.float32)]) for _ in range(2)))  # now under load

            async def late():
                await asyncio.sleep(0.05)
                return await batcher.submit([np.ones(1, np.float32)])

            # under load, a batch waits up to 200 ms: the late request joins the early one
            await asyncio.gather(batcher.submit([np.ones(1, np.float32)]), late())
            await batcher.close()
            return alone

    alone = run(scenario())
    assert alone < 0.15
    assert model.batches == [1, 2, 2]


def test_batcher_queue_full_raises_with_retry_after_and_queues_nothing():
    gate = threading.Event()
    model = CountingModel(gate)

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(model, executor, max_batch_size=1, max_wait_us=0, max_queue_size=2, retry_after_seconds=3)
            batcher.start()
            first = asyncio.ensure_future(batcher.submit([np.ones(1, np.float32)]))
            await asyncio.sleep(0.05)  # taken by the worker, blocked in the model
            queued = asyncio.ensure_future(batcher.submit([np.ones(1, np.float32)] * 2))
            await asyncio.sleep(0)
            assert batcher.depth == 2
            with pytest.raises(QueueFull) as caught:
                await batcher.submit([np.ones(1, np.float32)])
            assert batcher.depth == 2
            gate.set()
            await asyncio.gather(first, queued)
            await batcher.close()
            return caught.value

    error = run(scenario())
    assert error.status_code == 503
    assert error.headers["Retry-After"] == "3"
    assert model.batches == [1, 1, 1]


def test_batcher_close_serves_queued_requests_first():
    model = CountingModel()

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(model, executor, max_batch_size=2, max_wait_us=0, max_queue_size=64)
            batcher.start()
            first = asyncio.ensure_future(batcher.submit([np.full(1, v, np.float32) for v in (1, 2, 3, 4, 5)]))
            second = asyncio.ensure_future(batcher.submit([np.full(1, v, np.float32) for v in (10, 20)]))
            await asyncio.sleep(0)  # both queued, nothing run yet
            await batcher.close()
            with pytest.raises(ModelNotReady):
                await batcher.submit([np.ones(1, np.float32)])
            return await first, await second

    first, second = run(scenario())
    # each request gets its own rows, in its own order (the model's row i is input i's sum)
    assert first.tolist() == [[1.0], [2.0], [3.0], [4.0], [5.0]]
    assert second.tolist() == [[10.0], [20.0]]
    assert model.batches == [2, 2, 2, 1]  # every queued image was run before close returned


def test_batcher_reports_model_failure_to_every_request_in_the_batch():
    def broken(batch):
        raise RuntimeError("boom")

    results = submit_each(broken, [np.ones(1, np.float32)] * 3, max_batch_size=8)
    assert [getattr(r, "code", None) for r in results] == ["inference_failed"] * 3


# ---------------------------------------------------------------------------- input cache


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_input_cache_expires_entries_after_ttl():
    clock = FakeClock()
    cache = InputCache(ttl_seconds=10, max_bytes=1 << 20, clock=clock)
    cache.put("a", "grey", 1, np.zeros((8, 8, 1), np.uint8))
    clock.now = 9.9
    entry = cache.get("a")
    assert entry is not None and entry.model == "grey" and entry.version == 1
    clock.now = 10.1
    assert cache.get("a") is None
    cache.put("b", "grey", 1, np.zeros((8, 8, 1), np.uint8))  # writes drop what expired
    assert len(cache) == 1 and cache.get("b") is not None


def test_input_cache_evicts_oldest_over_the_byte_budget():
    cache = InputCache(ttl_seconds=100, max_bytes=64 * 1024)
    for i in range(200):
        held = cache.put(f"{i:032x}", "m", 1, np.full(1000, i % 256, np.uint8))
        assert held == cache.nbytes <= cache.max_bytes
    # 1,000 pixels and a 32-byte id each: three rows to a 4 KiB page, the schema and the indexes besides
    assert 20 <= len(cache) < 64 and cache.nbytes > cache.max_bytes / 2
    kept = sorted(int(i, 16) for i in (f"{i:032x}" for i in range(200)) if cache.get(i) is not None)
    assert kept == list(range(200 - len(cache), 200)), "the newest stay, the oldest go first"
    assert cache.get(f"{199:032x}").array[0] == 199


def test_input_cache_with_zero_budget_keeps_nothing():
    cache = InputCache(ttl_seconds=100, max_bytes=0)
    cache.put("a", "m", 1, np.zeros(4, np.uint8))
    assert cache.get("a") is None


# ---------------------------------------------------------------------------- images


def test_decode_applies_exif_orientation():
    # 8 wide x 4 high, left half white; EXIF orientation 6 means "rotate 90 clockwise to view"
    pixels = np.zeros((4, 8), np.uint8)
    pixels[:, :4] = 255
    image = Image.fromarray(pixels, "L")
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, quality=100)
    tall = InputSpec(height=8, width=4, channels=1, color_mode="grayscale", resample="nearest")
    array = decode_image(buffer.getvalue(), tall, max_pixels=1000)
    assert array.shape == (8, 4, 1)
    # after rotating clockwise, the white left half is on top
    assert array[:4].mean() > 200 and array[4:].mean() < 50


def test_an_unreadable_exif_block_is_ignored_and_the_pixels_decode_as_stored():
    pixels = np.zeros((4, 8), np.uint8)
    pixels[:, :4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    block = bytearray(exif.tobytes())
    mark = block.index(b"MM\x00*")  # the TIFF header's byte order: unreadable, Pillow raises SyntaxError
    block[mark : mark + 2] = b"ZZ"
    files = {}
    for name, extra in {"damaged": {"exif": bytes(block)}, "plain": {}}.items():
        buffer = io.BytesIO()
        Image.fromarray(pixels, "L").save(buffer, "WEBP", lossless=True, **extra)
        files[name] = buffer.getvalue()
    with pytest.raises(SyntaxError):
        Image.open(io.BytesIO(files["damaged"])).getexif()
    wide = InputSpec(height=4, width=8, channels=1, color_mode="grayscale", resample="nearest")
    damaged = decode_image(files["damaged"], wide, max_pixels=1000)
    np.testing.assert_array_equal(damaged, decode_image(files["plain"], wide, max_pixels=1000))
    assert damaged[:, :4].mean() > 200  # not rotated: the orientation could not be read


def test_decode_flattens_transparency_on_white():
    clear_black = np.zeros((8, 8, 4), np.uint8)  # black, fully transparent
    array = decode_image(png(clear_black, "RGBA"), GREY_SPEC, max_pixels=1000)
    assert array.min() == 255


def test_decode_takes_the_first_frame_of_an_animation():
    frames = [Image.new("L", (8, 8), 255), Image.new("L", (8, 8), 0)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 2
    assert decode_image(buffer.getvalue(), GREY_SPEC, max_pixels=1000).min() == 255


def test_decode_converts_mode_and_resizes():
    big_red = np.zeros((40, 60, 3), np.uint8)
    big_red[..., 0] = 255
    array = decode_image(png(big_red), RGB_SPEC, max_pixels=10_000)
    assert array.shape == (8, 8, 3) and array.dtype == np.uint8
    assert (array[..., 0] == 255).all() and (array[..., 1:] == 0).all()
    grey = decode_image(png(big_red), GREY_SPEC, max_pixels=10_000)
    assert grey.shape == (8, 8, 1)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", InvalidImage),
        (b"hello, this is plain text and not an image", InvalidImage),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", UnsupportedFormat),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', UnsupportedFormat),
    ],
)
def test_decode_refuses_non_images(data, error):
    with pytest.raises(error):
        decode_image(data, GREY_SPEC, max_pixels=1000)


def test_decode_refuses_too_many_pixels_from_the_header():
    with pytest.raises(ImageTooLarge):
        decode_image(png(np.zeros((40, 40), np.uint8)), GREY_SPEC, max_pixels=1599)
    assert decode_image(png(np.zeros((40, 40), np.uint8)), GREY_SPEC, max_pixels=1600).shape == (8, 8, 1)


def test_pixels_accept_hw_for_one_channel_and_refuse_bad_values():
    assert pixels_to_input(np.full((8, 8), 3).tolist(), GREY_SPEC).shape == (8, 8, 1)
    assert pixels_to_input(np.full((8, 8, 1), 3.5).tolist(), GREY_SPEC).dtype == np.float32
    bad = [
        np.full((8, 8), 3).tolist(),  # (H, W) is only for one-channel models
        np.full((8, 8, 3), 300).tolist(),
        np.full((8, 8, 3), -1).tolist(),
        [[["1"] * 3] * 8] * 8,
        [[[1, 2, 3]] * 8] * 7 + [[[1, 2]] * 8],
    ]
    for values in bad:
        with pytest.raises(InvalidInput):
            pixels_to_input(values, RGB_SPEC)
    nan = np.full((8, 8, 3), 1.0)
    nan[3, 3, 1] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        pixels_to_input(nan.tolist(), RGB_SPEC)


# ---------------------------------------------------------------------------- compiled inference


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]


def test_classifier_batches_match_single_calls_and_keras():
    model = build_colors_model()
    classifier = Classifier(model, RGB_SPEC, 3, max_batch_size=8, pad_batches=True)
    classifier.warm()
    batch = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3)).astype(np.float32)
    together = classifier(batch)  # padded to 8 inside
    alone = np.concatenate([classifier(batch[i : i + 1]) for i in range(5)])
    assert together.shape == (5, 3)
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(together, model(batch, training=False).numpy(), rtol=1e-5, atol=1e-6)
    assert classifier.calls == 6
    with pytest.raises(ValueError):
        classifier(np.zeros((9, 8, 8, 3), np.float32))


def test_classifier_refuses_a_model_that_does_not_match_its_card():
    with pytest.raises(ValueError, match="input"):
        Classifier(build_grey_model(), RGB_SPEC, 2, max_batch_size=4)
    with pytest.raises(ValueError, match="classes"):
        Classifier(build_grey_model(), GREY_SPEC, 3, max_batch_size=4)


def test_batcher_with_two_workers_runs_two_batches_at_once():
    gate = threading.Barrier(2, timeout=5)  # each call waits for the other: only passes if both run at once
    calls: list[int] = []

    def model(batch):
        gate.wait()
        calls.append(len(batch))
        return batch

    async def scenario():
        with ThreadPoolExecutor(2) as executor:
            batcher = Batcher(model, executor, max_batch_size=2, max_wait_us=0, max_queue_size=64, workers=2)
            batcher.start()
            out = await batcher.submit([np.full(1, i, np.float32) for i in range(4)])
            await batcher.close()
            return out

    assert run(scenario())[:, 0].tolist() == [0, 1, 2, 3]
    assert calls == [2, 2]


def test_the_framing_median_is_numpys():
    from modelcard.preprocess import _median

    rng = np.random.default_rng(3)
    for size in (1, 2, 3, 4, 111, 112):
        values = rng.integers(0, 256, size).astype(np.float32)
        assert _median(values) == float(np.median(values))


def test_store_versions_are_ascii_positive_integers(tmp_path):
    from modelcard import CARD_FILE, MODEL_FILE, list_versions

    # "¹" and Arabic-Indic 3 pass str.isdigit; "012" would be a second name for 12
    for name in ("1", "12", "0", "012", "\u00b9", "\u0663", "x", ".tmp-3"):
        folder = tmp_path / "grey" / name
        folder.mkdir(parents=True)
        (folder / MODEL_FILE).write_bytes(b"")
        (folder / CARD_FILE).write_text("{}")
    assert list_versions(tmp_path, "grey") == [1, 12]
