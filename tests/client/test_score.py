"""The scoring command: against the real service, and its file handling on its own."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tqdm import tqdm

from service.client.api import AsyncClient
from service.client.evaluation import evaluate, folder_labels
from service.client.inputs import expand_inputs
from service.client.rows import Row, format_for, open_output, read_rows
from service.client.score import Aborted, ScoreOptions, _read, main, score_paths
from tests.client.conftest import BRIGHT, DARK, ROOT, cli_env, png_bytes, run_cli, write_images


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_corrupt_file_becomes_an_error_row_and_the_run_goes_on(server_url, tmp_path):
    folder = tmp_path / "photos"
    values = [DARK, BRIGHT] * 5 + [BRIGHT]
    good = write_images(folder, values[:-1]) + write_images(folder / "nested", values[-1:], prefix="deep")
    expected = {str(path): "dark" if value == DARK else "bright" for path, value in zip(good, values, strict=True)}
    (folder / "img0002x-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (folder / "img0005x-truncated.png").write_bytes(png_bytes(BRIGHT, size=(64, 64))[:60])
    (folder / "notes.txt").write_text("not an image, not picked up from a folder")
    out = tmp_path / "results.csv"

    result = run_cli(
        "--url", server_url, "--model", "grey", str(folder), str(tmp_path / "missing.png"),
        "--out", str(out), "--batch-size", "4", "--concurrency", "2", "--top-k", "2",
    )  # fmt: skip

    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\r") == 0  # no progress bar in a pipe
    rows = {row["path"]: row for row in read_csv(out)}
    assert len(rows) == len(good) + 3
    errors = {Path(path).name: row["error"] for path, row in rows.items() if row["error"]}
    assert set(errors) == {"img0002x-corrupt.png", "img0005x-truncated.png", "missing.png"}
    assert errors["img0002x-corrupt.png"].startswith("invalid_image")
    assert errors["missing.png"] == "not found"
    for path, label in expected.items():
        row = rows[path]
        assert row["label"] == label
        assert (row["model"], row["version"], row["error"]) == ("grey", "1", "")
        assert float(row["confidence"]) > 0.99 and row["id"]
        assert [entry["label"] for entry in json.loads(row["top_k"])] == [
            row["label"],
            {"dark": "bright", "bright": "dark"}[row["label"]],
        ]
    assert "3 of 14 row(s) are errors" in result.stderr

    (folder / "img0002x-corrupt.png").write_bytes(png_bytes(DARK))  # fixed: --retry-errors scores it again
    again = run_cli(
        "--url", server_url, "--model", "grey", str(folder), "--out", str(out), "--resume", "--retry-errors"
    )
    assert again.returncode == 1, again.stderr
    rows = {row["path"]: row for row in read_csv(out)}
    assert len(rows) == len(good) + 2 == len(read_csv(out))  # missing.png was not an input this time
    assert rows[str(folder / "img0002x-corrupt.png")]["label"] == "dark"
    assert rows[str(folder / "img0005x-truncated.png")]["error"].startswith("invalid_image")


def test_a_killed_run_resumes_with_every_path_exactly_once(server_url, tmp_path):
    paths = write_images(tmp_path / "many", [DARK + (i % 7) for i in range(400)])
    out = tmp_path / "results.csv"
    args = ["--url", server_url, "--model", "grey", str(tmp_path / "many"), "--out", str(out)]
    process = subprocess.Popen(
        [sys.executable, "-m", "service.client", "score", *args, "--batch-size", "1", "--concurrency", "1"],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_bytes().count(b"\n") > 30):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    lines_before = out.read_bytes().count(b"\n") - 1
    assert 30 <= lines_before < len(paths), "the kill must land mid-run"
    with open(out, "ab") as handle:  # what a kill in the middle of a write leaves behind
        handle.write(f"{paths[-1]},dar".encode())

    result = run_cli(*args, "--resume", "--batch-size", "100")  # over the service's 64: batches get halved

    assert result.returncode == 0, result.stderr
    scored = [row["path"] for row in read_csv(out)]
    assert sorted(scored) == sorted(str(p) for p in paths)  # each path once: none lost, none repeated
    assert all(row["error"] == "" and row["label"] == "dark" for row in read_csv(out))
    assert out.read_bytes().endswith(b"\n")


def test_labelled_folders_get_accuracy_and_a_confusion_matrix(server_url, tmp_path):
    write_images(tmp_path / "set" / "dark", [DARK, 10, 60, 200])  # the last one is misclassified
    write_images(tmp_path / "set" / "bright", [BRIGHT, 250, 180, 230, 255])
    out = tmp_path / "eval.jsonl"

    result = run_cli("--url", server_url, "--model", "grey", str(tmp_path / "set"), "--out", str(out))

    assert result.returncode == 0, result.stderr
    assert "accuracy: 0.8889 (8/9 images in class folders)" in result.stdout
    lines = result.stdout.splitlines()
    header = lines.index("confusion matrix (rows: true class, columns: predicted class):")
    assert lines[header + 1].split() == ["dark", "bright"]
    assert lines[header + 2].split() == ["dark", "3", "1"]
    assert lines[header + 3].split() == ["bright", "0", "5"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 9 and all(row["error"] is None and row["version"] == 1 for row in rows)


def test_inputs_as_globs_and_path_lists_in_process(server_url, tmp_path, capsys):
    a = write_images(tmp_path / "a", [DARK, BRIGHT])
    b = write_images(tmp_path / "b", [BRIGHT, BRIGHT, DARK], prefix="b")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# images to score\n{b[0]}\n\nb/b0001.png\n{tmp_path / 'a' / '*.png'}\n")
    out = tmp_path / "out.csv"

    status = main(
        ["--url", server_url, "--model", "grey", str(listing), str(tmp_path / "b" / "*2.png"), "--out", str(out)]
    )

    assert status == 0
    scored = sorted(row["path"] for row in read_csv(out))
    assert scored == sorted(map(str, [b[0], tmp_path / "b" / "b0001.png", *a, b[2]]))
    assert "accuracy" not in capsys.readouterr().out  # folders a/ and b/ are not class names


def test_the_progress_bar_is_drawn_when_asked_with_the_error_count(server_url, tmp_path, capsys):
    write_images(tmp_path / "x", [DARK, BRIGHT, DARK])
    (tmp_path / "x" / "bad.png").write_bytes(b"not a png")
    args = ["--url", server_url, "--model", "grey", str(tmp_path / "x"), "--batch-size", "1", "--concurrency", "1"]

    status = main([*args, "--out", str(tmp_path / "o.csv"), "--progress", "always"])

    err = capsys.readouterr().err
    assert status == 1
    assert "\r" in err and "4/4" in err and "1 error(s)" in err and "img/s" in err
    assert main([*args, "--out", str(tmp_path / "p.csv"), "--progress", "never"]) == 1
    assert "\r" not in capsys.readouterr().err


def test_existing_output_needs_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "out.csv"
    out.write_text("path\n")
    try:
        main(["--model", "grey", str(tmp_path), "--out", str(out)])
    except SystemExit as exc:
        assert exc.code == 2
    assert "--resume" in capsys.readouterr().err


def test_an_unknown_model_aborts_before_writing(server_url, tmp_path, capsys):
    write_images(tmp_path / "x", [DARK])
    status = main(["--url", server_url, "--model", "nope", str(tmp_path / "x"), "--out", str(tmp_path / "o.csv")])
    assert status == 2
    assert "model_not_found" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


# --------------------------------------------------------------------------- pieces, without a service


def test_expand_inputs_walks_folders_dedupes_and_reports_missing(tmp_path):
    write_images(tmp_path / "d" / "sub", [1, 2])
    (tmp_path / "d" / ".hidden").mkdir()
    (tmp_path / "d" / ".hidden" / "x.png").write_bytes(b"")
    (tmp_path / "d" / "readme.md").write_text("")
    found = expand_inputs([str(tmp_path / "d"), str(tmp_path / "d" / "sub" / "img0000.png"), "nope.png", "q/*.jpg"])
    assert [Path(p).name for p in found.paths] == ["img0000.png", "img0001.png"]
    assert found.missing == ["nope.png"]
    assert found.warnings == ["no file matches q/*.jpg"]


def test_resume_drops_a_partial_last_line_in_either_format(tmp_path):
    for name in ("out.csv", "out.jsonl"):
        fmt = "csv" if name.endswith("csv") else "jsonl"
        path = tmp_path / name
        writer, kept = open_output(str(path), fmt, resume=False)
        writer.write(
            [
                Row("a.png", "dark", 0.9, [{"label": "dark", "confidence": 0.9}], "grey", 1, "id1"),
                Row('b, "odd".png', error="invalid_image: bad"),
            ]
        )
        writer.close()
        with open(path, "ab") as handle:
            handle.write(b"c.png,bri" if fmt == "csv" else b'{"path":"c.png","lab')
        rows = read_rows(str(path), fmt)
        assert [row.path for row in rows] == ["a.png", 'b, "odd".png']
        assert rows[0].top_k == [{"label": "dark", "confidence": 0.9}] and rows[1].failed
        writer, kept = open_output(str(path), fmt, resume=True)
        writer.write([Row("c.png", "bright", 0.8, [], "grey", 1, "id3")])
        writer.close()
        assert [row.path for row in read_rows(str(path), fmt)] == ["a.png", 'b, "odd".png', "c.png"]
        assert path.read_bytes().count(b"\n") == (4 if fmt == "csv" else 3)


def test_folder_labels_need_every_folder_to_name_a_class():
    assert folder_labels(["x/Cats/1.png", "x/dogs/2.png"], ["cats", "dogs"]) == {
        "x/Cats/1.png": "cats",
        "x/dogs/2.png": "dogs",
    }
    assert folder_labels(["x/cats/1.png", "x/birds/2.png"], ["cats", "dogs"]) is None
    rows = [Row("x/cats/1.png", "cats"), Row("x/cats/2.png", "dogs"), Row("x/dogs/3.png", error="bad")]
    result = evaluate(rows, folder_labels([r.path for r in rows], ["cats", "dogs"]), ["cats", "dogs"])
    assert (result.correct, result.total, result.errors, result.matrix) == (1, 2, 1, [[1, 1], [0, 0]])
    assert "1 error row(s) not counted" in result.render()


def test_links_are_walked_once_under_the_real_folders_name_and_odd_entries_become_error_rows(tmp_path):
    folder = tmp_path / "loop"
    write_images(folder, [DARK])
    (folder / "self").symlink_to(".")
    (folder / "up").symlink_to("..")  # before: 41 rows for one image, then a listing that filled the RAM
    os.mkfifo(folder / "pipe.png")  # opening it would block the run for good
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    found = expand_inputs([str(folder)])
    assert [Path(p).name for p in found.paths] == ["gone.png", "img0000.png", "pipe.png"]
    read = dict(_read(found.paths))
    assert isinstance(read[str(folder / "img0000.png")], bytes)
    for odd in ("pipe.png", "gone.png"):  # an error row each, at once: no hang, nothing dropped
        assert isinstance(read[str(folder / odd)], OSError)
    # a link to a class folder (sorted before it) does not hide the folder's own name
    photos = tmp_path / "photos"
    write_images(photos / "cats", [DARK])
    (photos / "a_latest").symlink_to("cats")
    assert [Path(p).parent.name for p in expand_inputs([str(photos)]).paths] == ["cats"]


def test_paths_that_are_not_utf8_or_hold_line_separators_survive_a_resume(tmp_path):
    odd = [os.fsdecode(b"caf\xe9.png"), "a\u2028b.png", "c\u0085d.png"]  # Linux allows any bytes in a name
    for name in ("out.csv", "out.jsonl"):
        fmt = "csv" if name.endswith("csv") else "jsonl"
        path = tmp_path / name
        writer, _ = open_output(str(path), fmt, resume=False)
        writer.write([Row(p, "dark", 0.9, [], "grey", 1, f"id{i}") for i, p in enumerate(odd)])
        writer.close()
        assert [row.path for row in read_rows(str(path), fmt)] == odd
        writer, kept = open_output(str(path), fmt, resume=True)
        writer.close()
        assert [row.path for row in kept] == odd
        if fmt == "csv":
            assert b"caf\xe9.png" in path.read_bytes()  # the name's own bytes, as the file system has them
        else:
            path.read_bytes().decode("utf-8")  # JSON lines stay UTF-8 for other tools: an escape instead


def test_resume_refuses_a_file_that_holds_no_scoring_row_instead_of_emptying_it(tmp_path):
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"id": 1, "note": "important"}\nnot json\n')
    with pytest.raises(ValueError, match="not a scoring output"):
        open_output(str(notes), "jsonl", resume=True)
    assert notes.read_text() == '{"id": 1, "note": "important"}\nnot json\n'


def test_an_output_format_the_writer_does_not_write_is_refused():
    assert format_for("x.csv") == "csv" and format_for("x.jsonl") == "jsonl"
    with pytest.raises(ValueError, match="cannot tell the output format"):
        format_for("x.tsv")  # it was accepted, then written with commas


def test_a_proxy_timing_out_on_batches_gets_smaller_ones_and_a_down_service_ends_the_run(tmp_path):
    prediction = {"id": "x", "label": "dark", "index": 0, "confidence": 0.9, "probabilities": {}, "top_k": []}
    paths = [str(p) for p in write_images(tmp_path / "x", [DARK] * 4)]
    options = ScoreOptions("grey", None, None, batch_size=4, concurrency=1)

    def run(answer) -> tuple[list[Row], list[int]]:
        sizes: list[int] = []

        def handler(request: httpx.Request) -> httpx.Response:
            sizes.append(request.read().count(b'name="file"'))
            return answer(sizes[-1])

        async def main_() -> list[Row]:
            transport = httpx.MockTransport(handler)
            async with AsyncClient("http://proxy", transport=transport, retries=1, backoff=0.01) as client:
                writer, _ = open_output(str(tmp_path / "o.csv"), "csv", resume=False)
                try:
                    return await score_paths(client, paths, options, writer, tqdm(disable=True))
                finally:
                    writer.close()

        return asyncio.run(main_()), sizes

    # nginx's proxy_read_timeout cuts batches of 2 or more: they are halved, every image is scored
    def slow_batches(n: int) -> httpx.Response:
        if n > 1:
            return httpx.Response(504, text="<html>504 Gateway Time-out</html>")
        return httpx.Response(200, json={"model": "grey", "version": 1, "predictions": [prediction]})

    rows, sizes = run(slow_batches)
    assert len(rows) == 4 and not any(row.failed for row in rows)
    assert sizes[:2] == [4, 4] and sizes.count(1) == 4  # retried once, then halved down to one image
    # a service that is down: one image still gets 502 after its retry, and the run ends
    with pytest.raises(Aborted, match="http_502"):
        run(lambda n: httpx.Response(502, text="<html>502 Bad Gateway</html>"))
