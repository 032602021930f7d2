"""Issue 14's records and leaderboard catalogue, through ``sslbench leaderboard``: every bad record is
listed and skipped, none is averaged, nothing read from a record can inject into a terminal, a
spreadsheet or a Markdown table, and files are written strict, durable and readable by others."""

from __future__ import annotations

import csv
import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from bad_input_helpers import run, snapshot

from sslbench.atomic import write_json, write_text
from sslbench.errors import RecordError
from sslbench.tools.records import ResultRecord, write_record

SHA_A, SHA_B = "a" * 64, "b" * 64


def record(sha: str = SHA_A, seed: Any = 0, top1: Any = 70.0, **changes: Any) -> dict[str, Any]:
    data = {
        "schema_version": 1,
        "task": "knn",
        "protocol": {"name": "knn", "source": "test", "settings": {"image_size": 16}},
        "dataset": {"name": "digits", "root": None, "split": "test", "num_classes": 10},
        "metrics": {"top1": top1},
        "checkpoint": {"path": "/ckpts/a.pth", "sha256": sha, "format": "torchvision", "arch": "resnet18"},
        "seed": seed,
        "finished_at": "2024-01-01T00:00:00+00:00",
    }
    data.update(changes)
    return data


def put(folder: Path, data: Any) -> Path:
    """``folder/result.json`` holding ``data`` as Python's json writes it (NaN and Infinity included)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(data if isinstance(data, str) else json.dumps(data))
    return folder / "result.json"


def test_bad_records_are_listed_and_skipped_never_averaged(tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    put(results / "s10", record(seed=10, top1=10.0))
    put(results / "s20", record(seed=20, top1=20.0))
    bad = {
        "nan-metric": record(seed=30, top1=math.nan),
        "inf-metric": record(seed=31, top1=math.inf),
        "negative-metric": record(seed=32, top1=-5.0),
        "nan-seed": record(seed=math.nan, top1=30.0),
        "bad-time": record(seed=33, top1=90.0, finished_at="not a date"),
        "string-protocol": record(seed=34, protocol="knn"),
        "string-options": record(seed=35, dataset={"name": "digits", "options": "x"}),
        "nested": '{"a": ' * 100_000 + "1" + "}" * 100_000,
    }
    paths = {name: put(results / name, data) for name, data in bad.items()}
    fifo = results / "fifo" / "result.json"
    fifo.parent.mkdir()
    os.mkfifo(fifo)  # opening it would block forever
    (results / "labels.json").write_text("{broken")
    before = snapshot(results)

    code, out, err = run(capsys, ["leaderboard", str(results), "--out", str(tmp_path / "board")])
    assert code == 0, err
    skipped = [line for line in err.splitlines() if line.startswith("sslbench leaderboard: skipped ")]
    for path in [*paths.values(), fifo, results / "labels.json"]:
        assert sum(f"skipped {path}:" in line for line in skipped) == 1, (path, err)
    assert len(skipped) == len(bad) + 2
    assert "Traceback" not in err
    # the two valid seeds only: mean 15, sample std 7.07, n=2; the NaN seed is listed above
    assert "15.00 ± 7.07 (n=2)" in out
    assert snapshot(results) == before


def test_newest_record_is_chosen_by_time_not_by_string(tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    put(results / "old", record(top1=10.0, finished_at="2024-01-01T23:00:00-05:00"))  # 04:00 UTC next day
    put(results / "new", record(top1=20.0, finished_at="2024-01-02T03:00:00+00:00"))
    code, out, _ = run(capsys, ["leaderboard", str(results), "--out", str(tmp_path / "board")])
    assert code == 0 and "| a.pth | **10.00** |" in out


def test_text_from_records_cannot_inject_into_terminal_spreadsheet_or_markdown(
    tmp_path: Path, capsys
) -> None:
    results = tmp_path / "results"
    put(results / "a", record(SHA_A))
    put(results / "b", record(SHA_B, top1=60.0, checkpoint={"path": "/c/b.pth", "sha256": SHA_B}))
    labels = {SHA_A: '=HYPERLINK("http://x")', SHA_B: "red\x1b[31m\x1b]0;title\x07\nsecond line"}
    (results / "labels.json").write_text(json.dumps(labels))
    code, out, err = run(capsys, ["leaderboard", str(results), "--out", str(tmp_path / "board")])
    assert code == 0, err
    assert "\x1b" not in out + err and "\x07" not in out + err
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(table) == 4 and any("red[31m]0;title second line" in line for line in table)
    markdown = (tmp_path / "board" / "leaderboard.md").read_text()
    assert "\x1b" not in markdown and "\nsecond line" not in markdown
    with (tmp_path / "board" / "leaderboard.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert {row["checkpoint"] for row in rows} == {'\'=HYPERLINK("http://x")', "red[31m]0;title second line"}
    assert not any(cell[:1] in "=+-@" for row in rows for cell in row.values() if cell and not _number(cell))


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_records_never_hold_nan_and_refuse_non_finite_metrics(tmp_path: Path) -> None:
    base = {k: v for k, v in record().items() if k != "schema_version"}
    done = ResultRecord(**{**base, "extra": {"history": [{"loss": math.nan}], "lr": math.inf}})
    path = write_record(tmp_path / "ok", done)

    def refuse(token: str) -> None:
        raise AssertionError(f"{token} in a record")

    data = json.loads(path.read_text(), parse_constant=refuse)  # strict JSON: no NaN / Infinity
    assert data["extra"] == {"history": [{"loss": None}], "lr": None}
    with pytest.raises(RecordError, match="metric top1 is nan"):
        write_record(tmp_path / "bad", ResultRecord(**{**base, "metrics": {"top1": math.nan}}))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json(tmp_path / "x.json", {"lr": math.nan})


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "x")
        write_json(tmp_path / "b.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("a.txt", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.json"]  # no temporary file left
