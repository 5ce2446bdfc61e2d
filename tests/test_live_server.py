"""`tests.live_server.serve` under xdist: a port taken between choosing it and uvicorn binding it."""

from __future__ import annotations

import socket

import httpx

from tests import live_server


def test_a_server_whose_port_was_taken_starts_again_on_another(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        choices = iter([busy])
        pick_free = live_server.free_port
        monkeypatch.setattr(live_server, "free_port", lambda: next(choices, None) or pick_free())
        with live_server.serve(tmp_path / "models", tmp_path / "server.log", ready=False) as server:
            assert server.port != busy
            assert httpx.get(server.url + "/health/live", timeout=5).status_code == 200
