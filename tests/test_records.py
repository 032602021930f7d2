"""Result records: validation on write and read, the v1 optional fields, and the schema upgrade chain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sslbench.errors import RecordError
from sslbench.tools import records
from sslbench.tools.records import ResultRecord, read_record, write_record

SHA = "ab" * 32


def minimal_v1() -> dict:
    """A v1 record as an early writer could leave it: only the required fields."""
    return {
        "schema_version": 1,
        "task": "knn",
        "protocol": {"name": "knn", "source": "DINO eval_knn.py", "settings": {"k": 20}},
        "dataset": {"name": "digits", "root": None, "split": "test"},
        "metrics": {"top1": 91.5},
        "checkpoint": {
            "path": "a.pth",
            "sha256": SHA,
            "format": "torchvision",
            "key": None,
            "arch": "resnet18",
        },
        "seed": 0,
    }


def test_a_written_record_reads_back_equal(tmp_path: Path) -> None:
    record = ResultRecord(**{k: v for k, v in minimal_v1().items() if k != "schema_version"})
    path = write_record(tmp_path / "run", record)
    assert path == tmp_path / "run" / "result.json"
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # no temporary file left
    back = read_record(path)
    assert back == record
    assert back.finished_at is not None and back.software["torch"]


def test_a_v1_record_without_optional_fields_loads_with_unknown_values(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(minimal_v1()))
    record = read_record(path)
    assert record.metrics == {"top1": 91.5} and record.status == "ok"
    # absent provenance stays unknown: never the reader's clock or software
    assert record.software == {} and record.started_at is None and record.finished_at is None
    assert record.error is None and record.extra == {}


def test_an_older_schema_version_is_upgraded_through_the_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pretend this release writes v2, whose metrics moved from fractions (v1) to percent."""

    def v1_to_v2(data: dict) -> dict:
        return {**data, "schema_version": 2, "metrics": {k: 100 * v for k, v in data["metrics"].items()}}

    monkeypatch.setattr(records, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(records, "UPGRADES", {1: v1_to_v2})
    old = {**minimal_v1(), "metrics": {"top1": 0.915}}
    (tmp_path / "result.json").write_text(json.dumps(old))
    record = read_record(tmp_path / "result.json")
    assert record.schema_version == 2
    assert record.metrics == {"top1": pytest.approx(91.5)}


def test_a_newer_schema_version_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps({**minimal_v1(), "schema_version": 99}))
    with pytest.raises(RecordError, match=r"result\.json: schema_version 99 .* newer sslbench"):
        read_record(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"checkpoint": {"path": "a.pth"}}, "checkpoint needs a 'sha256'"),
        ({"status": "failed", "metrics": {}}, "a failed record needs an 'error'"),
        ({"status": "ok", "metrics": {}}, "a successful record needs metrics"),
        ({"metrics": {"top1": "high"}}, "metric 'top1' must be a number"),
        ({"metrics": {"top1": float("nan")}}, "metric top1 is nan"),
        ({"metrics": {"top1": float("inf")}}, "metric top1 is inf"),
        ({"metrics": {"top1": -3.0}}, r"metric top1 = -3.0 is outside \[0, 100\]"),
        ({"metrics": {"top1": 250.0}}, r"metric top1 = 250.0 is outside \[0, 100\]"),
        ({"finished_at": "yesterday"}, "finished_at 'yesterday' is not an ISO 8601 time"),
        ({"started_at": 5}, "started_at 5 is not an ISO 8601 time"),
        ({"seed": float("nan")}, "seed must be an integer"),
        ({"dataset": {"name": "cub200", "options": "x"}}, "dataset.options must be a mapping"),
        ({"task": "segmentation"}, "task 'segmentation' is not one of"),
        ({"label": "mine"}, "unknown fields label"),
        ({"extra": []}, "extra must be a mapping"),
    ],
)
def test_invalid_records_are_refused_on_read_and_write(tmp_path: Path, change: dict, message: str) -> None:
    data = {**minimal_v1(), **change}
    path = tmp_path / "result.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError, match=message):
        read_record(path)
    if "label" not in change:
        record = ResultRecord(**{k: v for k, v in data.items() if k != "schema_version"})
        with pytest.raises(RecordError, match=message):
            write_record(tmp_path / "out", record)
        assert not (tmp_path / "out" / "result.json").exists()


def test_a_half_written_record_is_a_record_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(minimal_v1())[:60])
    with pytest.raises(RecordError, match=rf"{path}: not a readable JSON record"):
        read_record(path)
