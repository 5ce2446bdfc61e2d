"""`python -m service.client score`: score files, folders, globs or path lists into CSV/JSONL.

    python -m service.client score --url http://127.0.0.1:8000 --model digits \\
        photos/ more/*.png list.txt --out results.csv --concurrency 4 --batch-size 32

One row per image (path, label, confidence, top_k, model, version, id, error), appended and
flushed as batches complete. A file that cannot be read or that the service refuses becomes
an error row and the run goes on; if the service refuses a whole batch, its images are sent
again one by one so only the bad one fails. `--resume` skips the paths already in the output,
so a killed run continues with no row lost or repeated (add `--retry-errors` to score the
error rows again). When every image sits in a folder named after one of the model's classes,
the run ends with accuracy and a confusion matrix.

Exit status: 0 when every row is fine, 1 when some row is an error, 2 when the run could not
start or was aborted (unknown model, bad API key, service unreachable), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import io
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

from PIL import Image
from tqdm import tqdm

from service.client.api import AsyncClient, service_url
from service.client.errors import IMAGE_ERRORS, GatewayError, ServerError, ServiceError
from service.client.evaluation import evaluate, folder_labels
from service.client.inputs import expand_inputs, path_key
from service.client.results import PredictResult
from service.client.rows import Row, RowWriter, format_for, open_output

URL_ENV = "KERAS_SERVE_URL"
API_KEY_ENV = "KERAS_SERVE_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"

EXIT_OK, EXIT_ROW_ERRORS, EXIT_ABORTED, EXIT_INTERRUPTED = 0, 1, 2, 130


class Aborted(Exception):
    """The run cannot go on (the service is unreachable, the model vanished, the key is refused)."""


@dataclass(frozen=True)
class ScoreOptions:
    model: str
    version: int | None
    top_k: int | None
    batch_size: int
    concurrency: int


def _describe(error: BaseException) -> str:
    if isinstance(error, ServiceError):
        return f"{error.code}: {error.message}"
    if isinstance(error, OSError):
        return f"unreadable: {error.strerror or error}"
    return f"{type(error).__name__}: {error}"


def _six_digits(value: float) -> float:
    return float(f"{value:.6g}")  # significant digits: a 1e-9 probability stays visible


def _rows_for(paths: Sequence[str], result: PredictResult) -> list[Row]:
    if len(result.predictions) != len(paths):
        raise Aborted(f"the service answered {len(result.predictions)} predictions for {len(paths)} images")
    return [
        Row(
            path=path,
            label=prediction.label,
            confidence=_six_digits(prediction.confidence),
            top_k=[{"label": s.label, "confidence": _six_digits(s.confidence)} for s in prediction.top_k],
            model=result.model,
            version=result.version,
            id=prediction.id,
        )
        for path, prediction in zip(paths, result.predictions, strict=True)
    ]


def _read(paths: Sequence[str]) -> list[tuple[str, bytes | OSError]]:
    contents: list[tuple[str, bytes | OSError]] = []
    for path in paths:
        try:
            if os.path.exists(path) and not os.path.isfile(path):  # a FIFO or a device would block the run
                raise OSError(errno.EINVAL, "not a regular file")
            with open(path, "rb") as handle:
                contents.append((path, handle.read()))
        except OSError as exc:
            contents.append((path, exc))
    return contents


def _probe_image() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (1, 1), 255).save(buffer, "PNG")
    return buffer.getvalue()


def _batches(paths: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(paths), size):
        yield list(paths[start : start + size])


async def _score_files(client: AsyncClient, files: list[tuple[str, bytes]], options: ScoreOptions) -> list[Row]:
    """Rows for readable files: one request, or one per image if the service refuses the batch."""
    try:
        result = await client.predict(options.model, [data for _, data in files], options.top_k, options.version)
    except IMAGE_ERRORS + (ServerError,) as exc:
        if len(files) == 1:
            return [Row(path=files[0][0], error=_describe(exc))]
        if exc.code == "too_many_images":  # --batch-size above the service's limit: halve
            half = len(files) // 2
            return await _score_files(client, files[:half], options) + await _score_files(client, files[half:], options)
        rows = []
        for item in files:  # find the bad image(s): the others still get their prediction
            rows.extend(await _score_files(client, [item], options))
        return rows
    except GatewayError as exc:  # after retries: the service is down, or this batch outlasts the proxy's timeout
        if len(files) == 1:
            raise Aborted(_describe(exc)) from exc
        half = len(files) // 2
        return await _score_files(client, files[:half], options) + await _score_files(client, files[half:], options)
    except ServiceError as exc:  # 401, 404 model, 503 after retries, connection lost: nothing to gain going on
        raise Aborted(_describe(exc)) from exc
    return _rows_for([path for path, _ in files], result)


async def score_paths(
    client: AsyncClient, paths: Sequence[str], options: ScoreOptions, writer: RowWriter, progress: tqdm
) -> list[Row]:
    """Score `paths` with `options.concurrency` requests in flight, writing rows as they complete.

    Args:
        client: the async client (its connection limit should be at least the concurrency).
        paths: files to score.
        options: model, version, top_k, batch size, concurrency.
        writer: where rows go, flushed per batch.
        progress: the progress bar, advanced by finished images (its postfix counts error rows).

    Returns:
        The rows written, in completion order, as their `Row.outcome`.

    Raises:
        Aborted: the run cannot go on; rows written so far stay in the output.
    """
    batches = _batches(paths, options.batch_size)
    written: list[Row] = []
    errors = 0

    def emit(rows: list[Row]) -> None:
        nonlocal errors
        writer.write(rows)
        written.extend(row.outcome() for row in rows)
        failed = sum(row.failed for row in rows)
        if failed:
            errors += failed
            progress.set_postfix_str(f"{errors} error(s)", refresh=False)
        progress.update(len(rows))

    async def worker() -> None:
        for batch in batches:  # one shared iterator: each batch goes to exactly one worker
            contents = await asyncio.to_thread(_read, batch)
            unreadable = [Row(path=path, error=_describe(data)) for path, data in contents if isinstance(data, OSError)]
            readable = [(path, data) for path, data in contents if isinstance(data, bytes)]
            rows = unreadable + (await _score_files(client, readable, options) if readable else [])
            emit(rows)

    tasks = [asyncio.create_task(worker()) for _ in range(max(1, options.concurrency))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return written


def build_parser() -> argparse.ArgumentParser:
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    parser = argparse.ArgumentParser(
        prog="python -m service.client" if program in ("", "__main__.py", "-c") else program,
        description="Client tools for the keras-serve prediction service.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser(
        "score",
        help="score images into a CSV or JSONL file",
        description=__doc__.split("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[3],
    )
    score.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="files, folders (recursive), globs, or .txt path lists"
    )
    score.add_argument("--url", default=os.environ.get(URL_ENV, DEFAULT_URL), help=f"service URL (env {URL_ENV})")
    score.add_argument("--model", required=True, help="model name")
    score.add_argument("--model-version", type=int, default=None, help="model version (default: latest ready)")
    score.add_argument("--out", required=True, help="output file: .csv or .jsonl")
    score.add_argument("--format", choices=("csv", "jsonl"), default=None, help="override the output format")
    score.add_argument("--top-k", type=int, default=None, help="classes listed per image (server default if unset)")
    score.add_argument("--batch-size", type=int, default=32, help="images per request (default 32)")
    score.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    score.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"X-API-Key (env {API_KEY_ENV})")
    score.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    score.add_argument("--retries", type=int, default=5, help="retries on connection errors, 429, 503 (default 5)")
    mode = score.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="keep the output's rows and skip their paths")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    score.add_argument(
        "--retry-errors", action="store_true", help="with --resume: drop the output's error rows and score those again"
    )
    score.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr: auto draws it on a terminal only",
    )
    score.set_defaults(run=run_score)
    return parser


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.top_k is not None and args.top_k < 1:
        parser.error("--top-k must be at least 1")
    if args.retry_errors and not args.resume:
        parser.error("--retry-errors goes with --resume")
    if args.retries < 0:
        parser.error("--retries must be at least 0")
    try:
        service_url(args.url)
    except ValueError as exc:
        parser.error(f"--url: {exc}")
    try:
        args.format = format_for(args.out, args.format)
    except ValueError as exc:
        parser.error(str(exc))
    if os.path.exists(args.out) and os.path.getsize(args.out) > 0 and not (args.resume or args.overwrite):
        parser.error(f"{args.out} exists: pass --resume to continue it or --overwrite to replace it")


async def _run(args: argparse.Namespace, err: TextIO, out: TextIO) -> int:
    inputs = expand_inputs(args.inputs)
    for warning in inputs.warnings:
        print(f"warning: {warning}", file=err)
    if not len(inputs):
        print("error: no images found in the inputs", file=err)
        return EXIT_ABORTED

    async with AsyncClient(
        args.url,
        api_key=args.api_key,
        timeout=args.timeout,
        retries=args.retries,
        max_connections=args.concurrency,
    ) as client:
        try:
            info = await client.model(args.model, args.model_version)
            # One tiny image first: a wrong version, top-k or key fails the run here, not once per image.
            await client.predict(args.model, _probe_image(), args.top_k, args.model_version)
        except ServiceError as exc:
            print(f"error: cannot use model {args.model!r} at {args.url}: {_describe(exc)}", file=err)
            return EXIT_ABORTED

        try:
            writer, kept = open_output(args.out, args.format, resume=args.resume, drop_errors=args.retry_errors)
            kept = [row.outcome() for row in kept]
        except (OSError, ValueError) as exc:
            print(f"error: cannot write {args.out}: {exc}", file=err)
            return EXIT_ABORTED
        try:
            done = {path_key(row.path) for row in kept}
            missing = [Row(path=path, error="not found") for path in inputs.missing if path_key(path) not in done]
            todo = [path for path in inputs.paths if path_key(path) not in done]
            draw = args.progress == "always" or (args.progress == "auto" and err.isatty())
            if draw and len(inputs) - len(todo) - len(missing):
                print(f"resuming: {len(inputs) - len(todo) - len(missing)} image(s) already in {args.out}", file=err)
            writer.write(missing)
            options = ScoreOptions(args.model, args.model_version, args.top_k, args.batch_size, args.concurrency)
            started = time.monotonic()
            progress = tqdm(total=len(todo), file=err, disable=not draw or not todo, unit="img", dynamic_ncols=True)
            with progress:
                try:
                    new_rows = await score_paths(client, todo, options, writer, progress)
                except Aborted as exc:
                    progress.close()  # end the bar's line before the message
                    print(f"error: run aborted: {exc}", file=err)
                    print(f"the rows scored so far are in {args.out}; rerun with --resume to continue", file=err)
                    return EXIT_ABORTED
            elapsed = time.monotonic() - started
        finally:
            writer.close()

    # The summary and the exit status cover every input, including rows kept from earlier runs.
    wanted = {path_key(p) for p in inputs.paths + inputs.missing}
    rows = [row for row in kept if path_key(row.path) in wanted] + missing + new_rows
    failed = sum(row.failed for row in rows)
    if draw:
        rate = len(new_rows) / elapsed if elapsed > 0 else 0.0
        print(f"scored {len(new_rows)} image(s) in {elapsed:.1f} s ({rate:.0f} img/s) -> {args.out}", file=err)
    if failed:
        print(f"{failed} of {len(rows)} row(s) are errors (see the error column of {args.out})", file=err)
    labels = folder_labels([row.path for row in rows], info.class_names) if info.class_names else None
    if labels:
        try:
            print(evaluate(rows, labels, info.class_names).render(), file=out)
            out.flush()
        except BrokenPipeError:  # `| head` stopped reading: the rows are written, the exit status stands
            if out is sys.stdout:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    return EXIT_ROW_ERRORS if failed else EXIT_OK


def run_score(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args, sys.stderr, sys.stdout))
    except KeyboardInterrupt:
        print("\ninterrupted; rerun with --resume to continue", file=sys.stderr)
        return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: `python -m service.client score ...` (console script `keras-serve-score`
    takes the same arguments with or without the leading `score`).

    Args:
        argv: the arguments (default: `sys.argv[1:]`).

    Returns:
        The exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "score":
        argv.insert(0, "score")  # the only command, so the console script can leave it out
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(args, parser)
    return args.run(args)
