"""`python -m service --host HOST --port PORT`: serve the model store with uvicorn.

Every other setting comes from the environment (`MODEL_DIR`, `API_KEY`, `MAX_BATCH_SIZE`, ...;
see `service.config`), the HTTP limits included (`service.server`). SIGINT/SIGTERM stop
gracefully: no new connections, in-flight requests and queued batches finish (up to
GRACEFUL_SHUTDOWN_SECONDS), then the lifespan unloads.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from service.config import Settings
from service.server import uvicorn_options

log = logging.getLogger("service")


@contextlib.contextmanager
def shared_state_for_workers() -> Iterator[None]:
    """A new folder for what the worker processes share, named to them through the environment
    before they start, and removed when the server stops: the recent-inputs cache
    (`INPUT_CACHE_PATH`, so any worker finds any prediction id) and prometheus_client's
    multiprocess files (`PROMETHEUS_MULTIPROC_DIR`, so any worker's /metrics counts them all)."""
    with tempfile.TemporaryDirectory(prefix="keras-serve-") as folder:
        metrics = Path(folder) / "metrics"
        metrics.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
        os.environ["INPUT_CACHE_PATH"] = str(Path(folder) / "inputs.sqlite")
        log.info("%s: state shared by the worker processes", folder)
        yield


def main(argv: list[str] | None = None) -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m service", description="Serve Keras image classifiers over HTTP.")
    parser.add_argument("--host", default=defaults.host, help=f"bind address (default HOST or {defaults.host})")
    parser.add_argument("--port", type=int, default=defaults.port, help=f"port (default PORT or {defaults.port})")
    parser.add_argument("--model-dir", default=None, help=f"model store (default MODEL_DIR or {defaults.model_dir})")
    parser.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help=f"worker processes (default WORKERS or {defaults.workers})",
    )
    parser.add_argument("--log-level", default=defaults.log_level, help="debug, info, warning, error")
    args = parser.parse_args(argv)
    if args.model_dir is not None:
        # through the environment, so that worker processes building their own app see it too
        os.environ["MODEL_DIR"] = args.model_dir
    os.environ["WORKERS"] = str(args.workers)  # the worker processes read their settings from the environment
    settings = Settings(host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = uvicorn_options(settings)
    # uvicorn handles SIGINT/SIGTERM itself (stop accepting, drain, run the lifespan's shutdown)
    # and afterwards re-raises the signal against the handler that was installed before it.
    # SIGTERM is how containers are asked to stop, so a clean drain should exit 0, not -15.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    if settings.workers > 1:
        with shared_state_for_workers():
            uvicorn.run("service.main:create_app", factory=True, workers=settings.workers, **options)
    else:
        from service.main import create_app  # imports TensorFlow: only once arguments are known good

        uvicorn.run(create_app(settings), **options)


if __name__ == "__main__":
    main()
