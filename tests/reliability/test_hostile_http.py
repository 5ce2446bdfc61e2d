"""A hostile client against a real `python -m service` on 127.0.0.1 (issue 17's HTTP rows).

Each test is bounded in time and in requests. The servers run with short timeouts (1 s) so
that the timeouts can be seen to fire; the defaults are in `service/config.py`.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from html.parser import HTMLParser

import httpx
import pytest

from tests.live_server import request_statuses, serve
from tests.service.conftest import grey_image

TIMEOUTS = {"HEADER_TIMEOUT_SECONDS": "1", "BODY_TIMEOUT_SECONDS": "1", "KEEP_ALIVE_TIMEOUT_SECONDS": "1"}
KEY = "hostile-test-key"


@pytest.fixture(scope="module")
def store(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-store")
    models.write(root, "grey", 1)
    return root


@pytest.fixture(scope="module")
def open_server(store, tmp_path_factory):
    """No key, as compose starts it when API_KEY is unset: `API_KEY=` (empty)."""
    with serve(store, tmp_path_factory.mktemp("logs") / "open.log", API_KEY="", LOG_LEVEL="info", **TIMEOUTS) as s:
        yield s


@pytest.fixture(scope="module")
def keyed_server(store, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "keyed.log"
    with serve(store, log, ready=False, API_KEY=KEY, MAX_CONNECTIONS="6") as s:  # /health/ready needs the key
        yield s


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, limit: float) -> bytes:
    """Everything the server sends until it closes the connection (or `limit` seconds pass)."""
    sock.settimeout(limit)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def status_of(response: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", response)
    assert match, response[:200]
    return int(match.group(1))


# ---------------------------------------------------------------------------------- headers


@pytest.mark.exclusive  # timeouts to the tenth of a second: alone on the machine
def test_a_64_mib_header_is_refused_in_under_a_second_without_stalling_live_health(open_server):
    sock = connect(open_server)
    sent = threading.Event()
    answer: dict = {}

    def send() -> None:
        chunk = b"a" * (1 << 20)
        with contextlib.suppress(OSError):  # the server may close before all 64 MiB are sent
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(64):
                sock.sendall(chunk)
        sent.set()

    def hostile() -> None:
        """Sends in one thread, reads in this one: the time is until the answer's first bytes."""
        started = time.perf_counter()
        sender = threading.Thread(target=send)
        sender.start()
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            answer["response"] = sock.recv(65536)
        answer["seconds"] = time.perf_counter() - started
        answer["response"] += read_until_closed(sock, 5)
        sender.join(10)

    live = []
    with httpx.Client(base_url=open_server.url, timeout=5) as client:
        assert client.get("/health/live").status_code == 200  # connected before the attack starts
        thread = threading.Thread(target=hostile)
        thread.start()
        while (thread.is_alive() or len(live) < 5) and len(live) < 200:
            started = time.perf_counter()
            assert client.get("/health/live").status_code == 200
            live.append(time.perf_counter() - started)
    thread.join(10)
    sock.close()
    assert status_of(answer["response"]) == 431, answer["response"][:300]
    assert b'"code":"headers_too_large"' in answer["response"].replace(b" ", b"")
    assert answer["seconds"] < 1.0, answer
    assert max(live) < 0.5, f"/health/live stalled: {max(live):.3f} s"


def test_too_many_header_fields_get_431(open_server):
    sock = connect(open_server)
    sock.sendall(
        b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n"
    )
    assert status_of(read_until_closed(sock, 5)) == 431
    sock.close()
    assert httpx.get(open_server.url + "/health/live", headers={f"X-{i}": "1" for i in range(50)}).status_code == 200


@pytest.mark.exclusive  # timeouts to the tenth of a second: alone on the machine
def test_slow_headers_are_timed_out(open_server):
    """Slowloris: a header line every 0.3 s never finishes the request; the server gives up after 1 s."""
    socks = [connect(open_server) for _ in range(20)]
    started = time.perf_counter()
    for sock in socks:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
    closed: set[int] = set()
    responses: dict[int, bytes] = {}
    while len(closed) < len(socks) and time.perf_counter() - started < 5:
        time.sleep(0.3)
        for i, sock in enumerate(socks):
            if i in closed:
                continue
            try:
                sock.sendall(b"X-Slow: 1\r\n")
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    data = sock.recv(65536)
                    responses[i] = responses.get(i, b"") + data
                    if not data or b"request_timeout" in responses[i]:
                        closed.add(i)
                sock.setblocking(True)
            except OSError:
                closed.add(i)
    elapsed = time.perf_counter() - started
    for sock in socks:
        sock.close()
    assert len(closed) == len(socks), f"{len(socks) - len(closed)} slow connections still open after {elapsed:.1f}s"
    assert 0.9 < elapsed < 3.0, elapsed
    assert all(status_of(r) == 408 for r in responses.values() if r)


@pytest.mark.exclusive  # timeouts to the tenth of a second: alone on the machine
def test_a_silent_connection_and_an_idle_keep_alive_are_closed(open_server):
    silent = connect(open_server)
    started = time.perf_counter()
    assert read_until_closed(silent, 5) == b""  # closed quietly: it never asked anything
    assert time.perf_counter() - started < 2.5
    kept = connect(open_server)
    kept.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    started = time.perf_counter()
    response = read_until_closed(kept, 5)
    assert status_of(response) == 200
    assert 0.9 < time.perf_counter() - started < 2.5  # the keep-alive timeout (1 s), then closed
    silent.close()
    kept.close()


# ---------------------------------------------------------------------------------- bodies


def post_head(length: int, boundary: str = "b") -> bytes:
    return (
        f"POST /models/grey/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()


@pytest.mark.exclusive  # timeouts to the tenth of a second: alone on the machine
def test_a_body_shorter_than_its_content_length_and_a_trickle_are_timed_out(open_server):
    before = request_statuses(open_server.url)
    short = connect(open_server)
    started = time.perf_counter()
    short.sendall(post_head(100_000) + b"--b\r\n")
    response = read_until_closed(short, 5)
    assert status_of(response) == 408 and b"request_timeout" in response
    assert 0.9 < time.perf_counter() - started < 2.5
    short.close()

    trickle = connect(open_server)
    started = time.perf_counter()
    trickle.sendall(post_head(1000) + b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n')
    trickle.settimeout(0.2)
    response = b""
    while time.perf_counter() - started < 5:
        with contextlib.suppress(OSError):
            trickle.sendall(b"x")
        with contextlib.suppress(TimeoutError, OSError):
            data = trickle.recv(65536)
            response += data
            if not data:
                break
    trickle.close()
    assert status_of(response) == 408
    assert time.perf_counter() - started < 2.5
    after = request_statuses(open_server.url)
    assert after.get("408", 0) - before.get("408", 0) == 2
    assert after.get("500", 0) == before.get("500", 0)


def test_abandoned_uploads_are_no_server_error(open_server):
    before = request_statuses(open_server.url)
    log_before = open_server.log_path.read_text(errors="replace")
    for _ in range(5):
        sock = connect(open_server)
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        sock.sendall(post_head(1_000_000) + part + b"x" * 100_000)
        time.sleep(0.05)
        sock.close()  # mid-body
    time.sleep(0.5)
    after = request_statuses(open_server.url)
    assert after.get("500", 0) == before.get("500", 0), after
    assert after.get("499", 0) - before.get("499", 0) == 5, after
    new_log = open_server.log_path.read_text(errors="replace")[len(log_before) :]
    assert "Traceback" not in new_log, new_log[-3000:]
    assert len(new_log.splitlines()) <= 5, new_log[-3000:]  # at most one short line each
    # and the service still answers
    files = {"file": ("a.png", grey_image(255))}
    assert httpx.post(open_server.url + "/models/grey/predict", files=files, timeout=10).status_code == 200


# ---------------------------------------------------------------------------------- API key


def test_an_empty_api_key_is_no_key(open_server):
    files = {"file": ("a.png", grey_image(0))}
    for headers in ({}, {"X-API-Key": "anything"}, {"X-API-Key": ""}):
        response = httpx.post(open_server.url + "/models/grey/predict", files=files, headers=headers, timeout=10)
        assert response.status_code == 200, (headers, response.text)
    log = open_server.log_path.read_text(errors="replace")
    assert "no API_KEY set: the service is open" in log


# ---------------------------------------------------------------------------------- connections


@pytest.mark.exclusive  # timeouts to the tenth of a second: alone on the machine
def test_connections_over_the_cap_get_503_at_once(keyed_server):
    held = [connect(keyed_server) for _ in range(6)]
    try:
        time.sleep(0.2)
        extra = connect(keyed_server)
        started = time.perf_counter()
        response = read_until_closed(extra, 5)
        assert status_of(response) == 503 and b"retry-after: 1" in response.lower()
        assert time.perf_counter() - started < 0.5
        extra.close()
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(keyed_server.url + "/health/live", timeout=5).status_code == 200


# ---------------------------------------------------------------------------------- docs


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_the_docs_load_from_the_service_itself_with_a_key_set(keyed_server):
    with httpx.Client(base_url=keyed_server.url, timeout=10) as client:
        assert client.get("/models").status_code == 401
        for page in ("/docs", "/redoc"):
            response = client.get(page)
            assert response.status_code == 200 and "text/html" in response.headers["content-type"]
            assert "cdn" not in response.text.lower() and "https://" not in response.text, response.text
            links = _Links()
            links.feed(response.text)
            assert links.urls, response.text
            for url in links.urls:
                assert url.startswith("/"), url
                asset = client.get(url)
                assert asset.status_code == 200 and len(asset.content) > 1000, url
            assert "/openapi.json" in response.text
        schema = client.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["ApiKey"] == {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
        }
        assert schema["security"] == [{"ApiKey": []}]
        # what Swagger's "Try it out" sends once authorised
        assert client.get("/models", headers={"X-API-Key": KEY}).status_code == 200
        assert client.get("/docs/assets/other.js").status_code == 401  # only the shipped files are public


# ---------------------------------------------------------------------------------- the heap


def test_the_heap_is_frozen_once_the_models_are_loaded(open_server):
    deadline = time.monotonic() + 10
    while "heap frozen after loading" not in open_server.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, open_server.log_tail()
        time.sleep(0.2)
