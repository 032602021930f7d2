"""The leaderboard from hand-written records: numbers, protocol mismatch, broken records, labels, outputs."""

from __future__ import annotations

import csv
import json
import statistics
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from sslbench.cli import main
from sslbench.tools.leaderboard import Column, build_leaderboard, to_html, to_markdown

SHA_A, SHA_B = "a" * 64, "b" * 64


def write(
    folder: Path,
    sha: str,
    seed: int,
    metrics: dict[str, float],
    *,
    name: str = "a.pth",
    task: str = "linear",
    protocol: str = "linear-lbfgs",
    dataset: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    finished_at: str = "2024-01-01T00:00:00+00:00",
    status: str = "ok",
    error: str | None = None,
) -> Path:
    """A record as the JSON a run leaves, written by hand (not through ResultRecord)."""
    record = {
        "schema_version": 1,
        "task": task,
        "protocol": {"name": protocol, "source": "test", "settings": settings or {"image_size": 32}},
        "dataset": dataset or {"name": "digits", "root": None, "split": "test", "num_classes": 10},
        "metrics": metrics,
        "checkpoint": {"path": f"/ckpts/{name}", "sha256": sha, "format": "torchvision", "arch": "resnet18"},
        "seed": seed,
        "finished_at": finished_at,
        "status": status,
        "error": error,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(record))
    return folder / "result.json"


LINEAR = Column("linear", "digits", "linear-lbfgs", "top1")


def test_cells_are_the_mean_std_and_seed_count_of_the_records(tmp_path: Path) -> None:
    values = [70.0, 72.0, 77.0]
    for seed, value in enumerate(values):
        write(tmp_path / f"a{seed}", SHA_A, seed, {"top1": value, "top5": 99.0})
    write(tmp_path / "b0", SHA_B, 0, {"top1": 60.0, "top5": 98.0}, name="b.pth")
    board = build_leaderboard(tmp_path)
    assert board.rows == ["a.pth", "b.pth"] and board.columns == [LINEAR]  # top1 only by default
    a, b = board.cell("a.pth", LINEAR), board.cell("b.pth", LINEAR)
    assert a["mean"] == pytest.approx(statistics.mean(values))
    assert a["std"] == pytest.approx(statistics.stdev(values))
    assert a["n"] == 3
    assert b["mean"] == 60.0 and b["n"] == 1
    markdown = to_markdown(board)
    assert f"**{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n=3)**" in markdown
    assert "| b.pth | 60.00 |" in markdown

    assert main(["leaderboard", str(tmp_path), "--out", str(tmp_path / "board")]) == 0
    rows = list(csv.DictReader((tmp_path / "board" / "leaderboard.csv").open()))
    assert [r["checkpoint"] for r in rows] == ["a.pth", "b.pth"]
    assert float(rows[0]["digits linear-lbfgs top1 mean"]) == pytest.approx(73.0)
    assert float(rows[0]["digits linear-lbfgs top1 std"]) == pytest.approx(statistics.stdev(values))
    assert float(rows[0]["digits linear-lbfgs top1 n"]) == 3
    assert (tmp_path / "board" / "leaderboard.md").read_text() == markdown


def test_all_metrics_gives_one_column_per_metric(tmp_path: Path) -> None:
    write(tmp_path / "a", SHA_A, 0, {"top1": 70.0, "top5": 90.0, "mean_per_class": 69.0})
    board = build_leaderboard(tmp_path, all_metrics=True)
    assert [c.metric for c in board.columns] == ["top1", "mean_per_class", "top5"]


def test_records_that_disagree_on_the_protocol_are_never_averaged(tmp_path: Path) -> None:
    write(tmp_path / "s0", SHA_A, 0, {"top1": 70.0}, settings={"image_size": 32, "best_C": 1.0})
    write(tmp_path / "s1", SHA_A, 1, {"top1": 80.0}, settings={"image_size": 32, "best_C": 10.0})
    write(tmp_path / "big", SHA_A, 2, {"top1": 90.0}, settings={"image_size": 224, "best_C": 1.0})
    board = build_leaderboard(tmp_path)
    assert len(board.columns) == 2 and all(c.settings for c in board.columns)
    cells = sorted((board.cell("a.pth", c)["mean"], board.cell("a.pth", c)["n"]) for c in board.columns)
    # best_C is an outcome of the protocol: the two 32 px runs are averaged; the 224 px run is apart
    assert cells == [(75.0, 2), (90.0, 1)]
    assert len(board.warnings) == 1
    assert "settings.image_size" in board.warnings[0] and "never averaged" in board.warnings[0]
    assert "best_C" not in board.warnings[0]
    assert all(f"[{c.settings}]" in to_markdown(board) for c in board.columns)


def test_a_different_dataset_size_is_a_protocol_mismatch(tmp_path: Path) -> None:
    small = {"name": "digits", "split": "test", "num_test": 45}
    write(tmp_path / "full", SHA_A, 0, {"top1": 70.0})
    write(tmp_path / "small", SHA_A, 1, {"top1": 90.0}, dataset=small)
    assert len(build_leaderboard(tmp_path).columns) == 2


def test_corrupt_and_half_written_records_are_reported_by_path_and_skipped(tmp_path: Path, capsys) -> None:
    good = write(tmp_path / "good", SHA_A, 0, {"top1": 70.0})
    half = write(tmp_path / "half", SHA_A, 1, {"top1": 99.0})
    half.write_text(half.read_text()[:80])
    invalid = write(tmp_path / "invalid", SHA_A, 2, {"top1": 99.0}, status="unknown")
    (tmp_path / "good" / ".result.json.x1.tmp").write_text("{")  # an interrupted atomic write
    board = build_leaderboard(tmp_path)
    assert sorted(p.path for p in board.skipped) == sorted([half, invalid])
    assert board.cell("a.pth", LINEAR)["mean"] == 70.0 and board.cell("a.pth", LINEAR)["n"] == 1
    assert main(["leaderboard", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"skipped {half}" in err and f"skipped {invalid}" in err
    assert str(good) not in err
    assert str(half) in (tmp_path / "out" / "leaderboard.md").read_text()


def test_failed_runs_are_listed_and_not_counted(tmp_path: Path) -> None:
    write(tmp_path / "ok", SHA_A, 0, {"top1": 70.0})
    failed = write(tmp_path / "bad", SHA_A, 1, {}, status="failed", error="DatasetError: no images")
    board = build_leaderboard(tmp_path)
    assert board.cell("a.pth", LINEAR)["n"] == 1
    assert [(p.path, p.message) for p in board.failed] == [(failed, "DatasetError: no images")]


def test_the_newest_of_two_records_of_one_seed_is_kept(tmp_path: Path) -> None:
    write(tmp_path / "old", SHA_A, 0, {"top1": 50.0}, finished_at="2024-01-01T00:00:00+00:00")
    write(tmp_path / "new", SHA_A, 0, {"top1": 60.0}, finished_at="2024-02-01T00:00:00+00:00")
    board = build_leaderboard(tmp_path)
    assert board.cell("a.pth", LINEAR)["mean"] == 60.0 and board.cell("a.pth", LINEAR)["n"] == 1
    assert "kept the newest" in board.warnings[0]


def test_rows_are_named_by_labels_then_labels_json_then_file_name(tmp_path: Path) -> None:
    write(tmp_path / "a", SHA_A, 0, {"top1": 70.0}, name="checkpoint_last.pth")
    write(tmp_path / "b", SHA_B, 0, {"top1": 60.0}, name="checkpoint_last.pth")
    write(tmp_path / "c", "c" * 64, 0, {"top1": 50.0}, name="other.pth")
    assert sorted(build_leaderboard(tmp_path).rows) == [
        "checkpoint_last.pth (aaaaaaaa)",
        "checkpoint_last.pth (bbbbbbbb)",
        "other.pth",
    ]
    (tmp_path / "labels.json").write_text(json.dumps({SHA_B: "MoCo v2", SHA_A: "random init"}))
    board = build_leaderboard(tmp_path, labels={"aaaaaaaa": "mine", "other.pth": "theirs"})
    assert board.rows == ["MoCo v2", "mine", "theirs"]  # labels.json's order first
    assert board.cell("MoCo v2", LINEAR)["mean"] == 60.0
    assert main(["leaderboard", str(tmp_path), "--out", str(tmp_path / "o"), "--label", "abc=x"]) == 2


def test_published_rows_fill_matching_columns_and_are_marked(tmp_path: Path) -> None:
    imagenet = {"name": "imagefolder", "root": "/data/in1k", "split": "test", "num_classes": 1000}
    write(tmp_path / "sgd", SHA_A, 0, {"top1": 66.0}, protocol="linear-sgd", dataset=imagenet)
    write(tmp_path / "lbfgs", SHA_A, 0, {"top1": 64.0}, protocol="linear-lbfgs", dataset=imagenet)
    board = build_leaderboard(tmp_path, with_published=True)
    sgd = Column("linear", "imagenet-1k", "linear-sgd", "top1")
    lbfgs = Column("linear", "imagenet-1k", "linear-lbfgs", "top1")
    assert board.cell("MoCo v2 (published)", sgd)["mean"] == 67.5
    assert board.cell("MoCo v2 + FT (published)", sgd)["mean"] == 69.6
    assert board.cell("MoCo v2 (published)", lbfgs) is None  # another protocol: not beside it
    assert board.cell(
        "MoCo v1 (published)", Column("detection", "voc_2007_test", "detectron2-moco-voc", "AP50")
    )["mean"] == pytest.approx(81.5)
    assert board.cell("a.pth", sgd)["published"] == False  # noqa: E712 (a numpy bool)
    markdown = to_markdown(board)
    assert "| MoCo v2 (published) † |" in markdown and "published reference numbers" in markdown
    assert "| a.pth |" in markdown
    # a published number is never a column's best, even above every run (69.6 > 66.0)
    assert "**66.00**" in markdown and "**69.60**" not in markdown and "(published rows and" in markdown
    assert list(board.published_rows) and board.best(sgd) == 66.0


class _Table(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, list[tuple[str, str]]]] = []
        self.external: list[str] = []
        self.scripts = 0
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag in ("script", "link", "img") and (attributes.get("src") or attributes.get("href")):
            self.external.append(tag)
        self.scripts += tag == "script"
        if tag == "tr":
            self.rows.append((attributes.get("class") or "", []))
        if tag == "td":
            self._cell = attributes.get("class") or ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self.rows[-1][1].append((self._cell, data))
            self._cell = None


def test_html_page_is_self_contained_marks_best_and_published(tmp_path: Path) -> None:
    write(tmp_path / "a", SHA_A, 0, {"top1": 70.0})
    write(tmp_path / "b", SHA_B, 0, {"top1": 80.0}, name="b.pth")
    parser = _Table()
    parser.feed(to_html(build_leaderboard(tmp_path, with_published=True)))
    assert parser.external == [] and parser.scripts == 1
    body = {cells[0][1]: (cls, cells) for cls, cells in parser.rows[1:]}
    assert body["b.pth"][1][1] == ("best", "80.00")
    assert body["a.pth"][1][1] == ("", "70.00")
    assert body["MoCo v2 (published) †"][0] == "published"


def test_a_baseline_row_is_marked_in_every_format_and_never_the_best(tmp_path: Path, capsys) -> None:
    write(tmp_path / "a0", SHA_A, 0, {"top1": 90.0}, name="random.pth")  # the baseline scores highest
    write(tmp_path / "b0", SHA_B, 0, {"top1": 80.0}, name="moco.pth")
    board_dir = tmp_path / "board"
    assert main(["leaderboard", str(tmp_path), "--out", str(board_dir), "--baseline", "random.pth"]) == 0
    markdown = (board_dir / "leaderboard.md").read_text()
    assert "| random.pth (baseline) | 90.00 |" in markdown and "| moco.pth | **80.00** |" in markdown
    rows = {r["checkpoint"]: r for r in csv.DictReader((board_dir / "leaderboard.csv").open())}
    assert (rows["random.pth"]["baseline"], rows["moco.pth"]["baseline"]) == ("True", "False")
    html = (board_dir / "leaderboard.html").read_text()
    assert '<tr class="baseline"><td>random.pth (baseline)</td>' in html

    # the same from a baselines.json beside the records (what the quickstart writes), by sha256
    (tmp_path / "baselines.json").write_text(json.dumps([SHA_A]))
    assert build_leaderboard(tmp_path).baseline_rows == {"random.pth"}
    assert main(["leaderboard", str(tmp_path), "--out", str(board_dir), "--baseline", "nope.pth"]) == 2
    assert "--baseline nope.pth" in capsys.readouterr().err
    (tmp_path / "baselines.json").write_text('{"not": "a list"}')
    assert main(["leaderboard", str(tmp_path), "--out", str(board_dir)]) == 2
    assert "expected a JSON list" in capsys.readouterr().err


def test_a_record_whose_zoo_name_is_not_a_string_is_skipped_by_path(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad", SHA_A, 0, {"top1": 70.0})
    record = json.loads(bad.read_text())
    record["checkpoint"]["zoo"] = 5
    bad.write_text(json.dumps(record))
    board = build_leaderboard(tmp_path)
    assert [p.path for p in board.skipped] == [bad] and "checkpoint.zoo must be" in board.skipped[0].message
    assert board.rows == []
