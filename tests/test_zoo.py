"""Checkpoints by name: ``sslbench zoo list`` and ``zoo:NAME`` read from a ``file://`` table entry,
downloaded once, its sha256 recorded and checked on every later use."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from vit_sources import ARCH, IMAGE, backbone_of, dino, tiny_vit

from sslbench.checkpoints import zoo
from sslbench.cli import main
from sslbench.data import fixtures
from sslbench.tools.records import read_record


@pytest.fixture
def table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A test-only table of two file:// entries, and an empty cache folder."""
    source = tmp_path / "server"
    source.mkdir()
    vit = tiny_vit(seed=1)
    torch.save(backbone_of(vit), source / "tiny_dino.pth")
    torch.save(dino(vit), source / "tiny_dino_full.pth")
    entries = [
        {
            "name": "tiny_dino",
            "source": "tests",
            "url": (source / "tiny_dino.pth").as_uri(),
            "format": "timm",
            "arch": ARCH,
            "citation": "test fixture",
            "published": [
                {"protocol": "knn", "dataset": "cub200", "metric": "top1", "value": 99.5, "cite": "t, knn"},
                {
                    "protocol": "linear-dino",
                    "dataset": "cub200",
                    "metric": "top1",
                    "value": 2.5,
                    "cite": "t, lin",
                },
            ],
        },
        {
            "name": "tiny_dino_full",
            "source": "tests",
            "url": (source / "tiny_dino_full.pth").as_uri(),
            "format": "dino",
            "arch": ARCH,
            "citation": "test fixture",
            "key": "student",
        },
    ]
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump({"checkpoints": entries}))
    monkeypatch.setenv(zoo.TABLE_ENV, str(path))
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    return {"table": path, "source": source, "cache": tmp_path / "cache"}


def _error(argv: list[str], capsys: pytest.CaptureFixture[str], pattern: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err  # the download's progress bar may come first
    errors = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err and len(errors) == 1 and err.endswith(errors[0] + "\n"), err
    assert re.search(pattern, errors[0]), err


def test_shipped_table_lists_checkpoints_with_cited_numbers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(zoo.TABLE_ENV, raising=False)
    assert main(["zoo", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"dino_vits16", "dino_vitb16", "mae_vitb16"} <= set(rows)
    assert all(r["url"].startswith("https://dl.fbaipublicfiles.com/") for r in rows.values())
    assert all(n["cite"] for r in rows.values() for n in r["published"])
    numbers = {(name, n["protocol"]): n["value"] for name, r in rows.items() for n in r["published"]}
    assert numbers[("dino_vits16", "knn")] == 74.5  # facebookresearch/dino README.md
    assert numbers[("dino_vitb16", "linear-dino")] == 78.2
    assert numbers[("mae_vitb16", "finetune-mae-ce")] == 83.6  # facebookresearch/mae README.md
    assert numbers[("mae_vitb16", "linear-mae")] == 67.8  # mae FINETUNE.md, Linear Probing, PT/GPU
    assert numbers[("mocov3_vitb16", "linear-mocov3")] == 76.7  # moco-v3 CONFIG.md
    assert {n["dataset"] for r in rows.values() for n in r["published"]} == {"imagenet-1k"}
    assert rows["mocov3_vits16"]["arch"] == "vit_d384_l12_h12_p16"  # 12 heads (moco-v3 README)
    from sslbench.checkpoints.readers import check_any_arch

    assert all(check_any_arch(r["arch"]) for r in rows.values())


def test_zoo_name_is_downloaded_once_and_read_with_the_table_settings(
    table: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", "zoo:tiny_dino_full", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["format"], info["key"], info["arch"]) == ("dino", "student", ARCH)
    assert info["zoo"] == "tiny_dino_full"
    cached = table["cache"] / "zoo" / "tiny_dino_full" / "tiny_dino_full.pth"
    assert info["path"] == str(cached)
    digest = hashlib.sha256((table["source"] / "tiny_dino_full.pth").read_bytes()).hexdigest()
    assert (cached.parent / "sha256").read_text().strip() == digest == info["sha256"]
    (table["source"] / "tiny_dino_full.pth").unlink()  # a second use needs no download
    assert main(["inspect", "zoo:tiny_dino_full"]) == 0
    assert main(["zoo", "list"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"zoo:tiny_dino_full .* \(cached\)", listing)
    assert re.search(r"zoo:tiny_dino .* \(not downloaded\)", listing)
    assert "published knn cub200 top1 99.5  [t, knn]" in listing


def test_a_changed_cached_file_is_refused_in_one_line(
    table: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", "zoo:tiny_dino"]) == 0
    cached = table["cache"] / "zoo" / "tiny_dino" / "tiny_dino.pth"
    torch.save(backbone_of(tiny_vit(seed=2)), cached)  # another file of the same name and layout
    _error(["inspect", "zoo:tiny_dino"], capsys, r"zoo:tiny_dino: .* changed since its first download")


def test_a_download_that_differs_from_a_pinned_sha256_is_refused_and_removed(
    table: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = yaml.safe_load(table["table"].read_text())
    data["checkpoints"][0]["sha256"] = "0" * 64
    table["table"].write_text(yaml.safe_dump(data))
    _error(["inspect", "zoo:tiny_dino"], capsys, r"the table pins 000000000000")
    assert not (table["cache"] / "zoo" / "tiny_dino" / "tiny_dino.pth").exists()


def test_bad_names_urls_and_tables_give_one_line(
    table: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _error(["inspect", "zoo:nope"], capsys, r"zoo:nope: no such checkpoint; known: tiny_dino, tiny_dino_full")
    (table["source"] / "tiny_dino.pth").unlink()
    _error(["inspect", "zoo:tiny_dino"], capsys, r"zoo:tiny_dino: download of file://.* failed")
    assert not list((table["cache"] / "zoo" / "tiny_dino").glob("*"))  # no partial file left
    data = yaml.safe_load(table["table"].read_text())
    del data["checkpoints"][1]["url"]
    table["table"].write_text(yaml.safe_dump(data))
    _error(["zoo", "list"], capsys, r"zoo.yaml: checkpoint tiny_dino_full: missing or empty url")
    monkeypatch.setenv(zoo.TABLE_ENV, str(table["table"].parent / "absent.yaml"))
    _error(["zoo", "list"], capsys, r"absent.yaml \(\$SSLBENCH_ZOO\): no such file")
    with pytest.raises(SystemExit):
        main(["zoo", "show"])


def test_a_cache_path_that_is_a_file_is_named_in_one_line(
    table: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_folder = table["table"]  # an existing file
    monkeypatch.setenv(zoo.CACHE_ENV, str(not_a_folder))
    _error(["inspect", "zoo:tiny_dino"], capsys, r"cannot create the cache folder .*zoo.yaml/zoo/tiny_dino")
    assert not_a_folder.is_file()


def test_knn_takes_a_zoo_name(table: dict[str, Path], tmp_path: Path) -> None:
    root = fixtures.write_cub(tmp_path / "cub", num_classes=3, per_class=4, size=IMAGE).root
    argv = ["knn", "zoo:tiny_dino", "--dataset", "cub200", "--root", str(root), "--knn", "3:0.07"]
    argv += ["--primary", "3:0.07", "--image-size", str(IMAGE), "--workers", "0", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    record = read_record(tmp_path / "run" / "result.json")
    assert record.checkpoint["path"].endswith("zoo/tiny_dino/tiny_dino.pth")
    assert record.protocol["settings"]["feature"] == "cls"


def test_zoo_list_imports_no_torch(table: dict[str, Path]) -> None:
    code = "import sys; from sslbench.cli import main; main(['zoo', 'list']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


def test_suite_runs_a_zoo_name_and_its_jobs_keep_the_name(
    table: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = fixtures.write_cub(tmp_path / "cub", num_classes=3, per_class=4, size=IMAGE).root
    suite = tmp_path / "suite.yaml"
    options = f'{{image-size: {IMAGE}, batch-size: 16, workers: 0, knn: ["3:0.07"], primary: "3:0.07"}}'
    suite.write_text(
        f"name: z\ntasks:\n  - name: knn\n    task: knn\n    dataset: cub200\n    root: {root}\n"
        f"    options: {options}\n"
    )
    assert main(["suite", "zoo:tiny_dino_full", "--suite", str(suite), "--out", str(tmp_path / "res")]) == 0
    records = list((tmp_path / "res").glob("*/knn-*/seed*/result.json"))
    assert len(records) == 1
    record = read_record(records[0])
    digest = (table["cache"] / "zoo" / "tiny_dino_full" / "sha256").read_text().strip()
    assert record.status == "ok" and record.checkpoint["sha256"] == digest
    assert record.checkpoint["key"] == "student"  # the table's entry, so the job read it by name


def _knn_run(checkpoint: str, root: Path, out: Path) -> None:
    argv = ["knn", checkpoint, "--dataset", "cub200", "--root", str(root), "--knn", "3:0.07"]
    argv += ["--primary", "3:0.07", "--image-size", str(IMAGE), "--workers", "0", "--device", "cpu"]
    assert main([*argv, "--out", str(out)]) == 0


def test_leaderboard_puts_the_zoo_published_row_beside_our_run_of_it(
    table: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = fixtures.write_cub(tmp_path / "cub", num_classes=3, per_class=4, size=IMAGE).root
    other = tmp_path / "zzz.pth"  # a checkpoint given by path, whose row sorts after ours
    torch.save(backbone_of(tiny_vit(seed=3)), other)
    _knn_run("zoo:tiny_dino", root, tmp_path / "runs" / "zoo")
    _knn_run(str(other), root, tmp_path / "runs" / "path")
    ours = read_record(tmp_path / "runs" / "zoo" / "result.json")
    assert (
        ours.checkpoint["zoo"] == "tiny_dino"
        and "zoo" not in read_record(tmp_path / "runs" / "path" / "result.json").checkpoint
    )
    top1 = f"{ours.metrics['top1']:.2f}"

    board = tmp_path / "board"
    capsys.readouterr()
    assert main(["leaderboard", str(tmp_path / "runs"), "--out", str(board)]) == 0
    markdown = (board / "leaderboard.md").read_text()
    header, _, *rows = markdown.split("\n\n")[0].splitlines()
    assert header == "| checkpoint | cub200 linear-dino top1 | cub200 knn top1 |"  # linear columns first
    # our run, then the zoo's numbers for it (never bold), then the other checkpoint
    assert re.fullmatch(rf"\| zoo:tiny_dino \|  \| (\*\*)?{top1}(\*\*)? \|", rows[0]), rows[0]
    assert rows[1] == "| zoo:tiny_dino (published) † | 2.50 | 99.50 |"
    assert rows[2].startswith("| zzz.pth |") and len(rows) == 3
    assert "Row zoo:tiny_dino (published) † holds what tests publishes" in markdown
    assert "cub200 knn top1 99.5: t, knn" in markdown and "cub200 linear-dino top1 2.5: t, lin" in markdown

    csv_rows = list(csv.DictReader((board / "leaderboard.csv").open()))
    assert [r["checkpoint"] for r in csv_rows] == ["zoo:tiny_dino", "zoo:tiny_dino (published)", "zzz.pth"]
    run, published = csv_rows[0], csv_rows[1]
    assert (run["published"], published["published"]) == ("False", "True")
    assert float(run["cub200 knn top1 mean"]) == pytest.approx(ours.metrics["top1"])
    assert float(published["cub200 knn top1 mean"]) == 99.5
    assert float(published["cub200 linear-dino top1 mean"]) == 2.5
    assert run["cub200 linear-dino top1 mean"] == ""
    assert run["source"] == "" and "t, knn" in published["source"]

    page = (board / "leaderboard.html").read_text()
    cells = re.findall(r'<tr class="published"><td>zoo:tiny_dino \(published\) †</td>(.*?)</tr>', page)
    assert cells == ['<td data-value="2.5">2.50</td><td data-value="99.5">99.50</td>']  # no class="best"
    assert (
        page.index(">zoo:tiny_dino</td>")
        < page.index(">zoo:tiny_dino (published) †<")
        < page.index(">zzz.pth<")
    )


def test_a_zoo_table_naming_an_unknown_protocol_or_dataset_is_one_line(
    table: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = fixtures.write_cub(tmp_path / "cub", num_classes=3, per_class=4, size=IMAGE).root
    _knn_run("zoo:tiny_dino", root, tmp_path / "runs" / "zoo")
    good = table["table"].read_text()
    for field, bad, pattern in (
        ("protocol", "linear", r"protocol 'linear' is not one of knn, linear-lbfgs"),
        ("dataset", "imagenet1k", r"dataset 'imagenet1k' is not one of .*imagenet-1k"),
        ("metric", "acc", r"metric 'acc' is not one of top1, top5, mean_per_class"),
        ("value", 101, r"value 101 is not a percentage"),
    ):
        data = yaml.safe_load(good)
        data["checkpoints"][0]["published"][1][field] = bad
        table["table"].write_text(yaml.safe_dump(data))
        label = r"zoo.yaml: checkpoint tiny_dino: published\[1\]: "
        _error(["zoo", "list"], capsys, label + pattern)
        _error(["leaderboard", str(tmp_path / "runs"), "--out", str(tmp_path / "b")], capsys, label + pattern)
    assert not (tmp_path / "b").exists()
    data = yaml.safe_load(good)
    data["checkpoints"][0]["published"].append(data["checkpoints"][0]["published"][0])
    table["table"].write_text(yaml.safe_dump(data))
    _error(
        ["zoo", "list"],
        capsys,
        r"checkpoint tiny_dino: published lists one protocol, dataset and metric twice",
    )
    data = yaml.safe_load(good)
    del data["checkpoints"][0]  # the table no longer lists the checkpoint the run read by name
    table["table"].write_text(yaml.safe_dump(data))
    assert main(["leaderboard", str(tmp_path / "runs"), "--out", str(tmp_path / "b")]) == 0
    out, err = capsys.readouterr()
    assert "zoo:tiny_dino: its checkpoint zoo:tiny_dino is not in the zoo table; no published row" in err
    assert "(published)" not in out
