"""Dynamic batching seen from HTTP: concurrent requests share model calls and get their own rows."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi.testclient import TestClient

from service.main import create_app
from tests.service.conftest import grey_image, settings_for, wait_ready


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{{{wanted}}} not in /metrics"
    return float(match.group(1))


def test_concurrent_requests_are_served_by_shared_model_calls(models, tmp_path):
    models.write(tmp_path, "grey", 1)
    settings = settings_for(tmp_path, max_batch_size=16, max_batch_wait_us=20_000)
    requests = 48
    values = np.random.default_rng(0).integers(0, 256, requests)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        classifier = client.app.state.registry.resolve("grey").classifier
        calls_before = classifier.calls

        def ask(value: int) -> tuple[int, str]:
            response = client.post("/models/grey/predict", files={"file": ("x.png", grey_image(int(value)))})
            return response.status_code, response.json()["predictions"][0]["label"]

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, values))
        text = client.get("/metrics").text

    calls = classifier.calls - calls_before
    # every request got its own row back, not a neighbour's
    assert answers == [(200, "bright" if v > 127.5 else "dark") for v in values]
    assert 1 <= calls < requests / 2, f"{requests} concurrent requests took {calls} model calls"
    labels = {"model": "grey", "version": "1"}
    assert metric(text, "batch_size_sum", **labels) == requests
    assert metric(text, "batch_size_count", **labels) == calls
    single_batches = metric(text, "batch_size_bucket", le="1.0", **labels)
    assert single_batches < calls, "some model call must have served several requests"
