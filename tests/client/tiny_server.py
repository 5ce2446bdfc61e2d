"""A real uvicorn on 127.0.0.1 serving tiny models: `python -m tests.client.tiny_server STORE`.

Writes the service tests' hand-set models (`grey`: dark/bright, `colors`: red/green/blue)
into the model store STORE, binds a free port, prints it on stdout, then serves until
killed. A subprocess, so the test process itself never imports TensorFlow.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import uvicorn

from service.main import create_app
from tests.service.conftest import ModelFactory, settings_for


def main() -> None:
    store = Path(sys.argv[1])
    factory = ModelFactory(store.parent / "saved-models")
    factory.write(store, "grey", 1)
    factory.write(store, "colors", 1)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    app = create_app(settings_for(store, max_batch_size=16, max_images_per_request=64))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    print(sock.getsockname()[1], flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
