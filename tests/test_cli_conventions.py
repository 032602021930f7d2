"""The command line as a new user meets it: fast help, one spelling per concept, overrides anywhere."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslbench.cli import build_parser, main, parse_command_line
from sslbench.commandline import HelpFormatter, is_override
from sslbench.data import fixtures
from sslbench.models.resnet import build_backbone
from sslbench.tools.records import read_record

HEAVY = ("torch", "torchvision", "faiss", "sklearn", "pandas", "matplotlib")

_HELP_PROBE = """
import sys
from sslbench.cli import main
try:
    main({argv!r})
except SystemExit as exc:
    assert exc.code == 0, exc.code
print("imported:", [name for name in {heavy!r} if name in sys.modules])
"""


@pytest.mark.parametrize("argv", [["--help"], ["knn", "--help"], ["suite", "--help"], ["finetune", "--help"]])
def test_help_imports_no_torch_faiss_or_other_heavy_library(argv: list[str]) -> None:
    probe = _HELP_PROBE.format(argv=argv, heavy=HEAVY)
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert "usage: sslbench" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "imported: []"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_with_a_default_shows_it_in_help() -> None:
    hidden = []
    for name, sub in _subparsers().items():
        formatter = HelpFormatter(prog=sub.prog)
        for action in sub._actions:
            default = action.default
            if not action.option_strings or default is None or default is False or default == []:
                continue
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            text = formatter._expand_help(action) if action.help else ""
            if "default" not in text:
                hidden.append(f"{name} {action.option_strings[0]}")
        assert sub.allow_abbrev is False, f"{name}: option prefixes must not be matched"
    assert not hidden, f"defaults missing from --help: {hidden}"


def test_knn_help_prints_the_protocol_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["knn", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--batch-size BATCH_SIZE images per batch (default: 256)" in out
    assert "(default: 20:0.07)" in out and "--seed SEED" in out and "(default: 0)" in out


@pytest.mark.parametrize(
    "token", ["data_root=/data", "coretuning.eta=1", "ft.dim_mask=both", "slurm.gpus_per_node=8"]
)
def test_key_value_tokens_are_overrides(token: str) -> None:
    assert is_override(token)


@pytest.mark.parametrize("token", ["runs/a=b.pth", "model.pth", "./x=1.pth", "=1", "--out=x"])
def test_paths_and_options_are_not_overrides(token: str) -> None:
    assert not is_override(token)


@pytest.mark.parametrize(
    "argv",
    [
        ["suite", "A.pth", "B.pth", "--suite", "paper", "--out", "runs/p", "data_root=/data", "name=x"],
        ["suite", "A.pth", "B.pth", "data_root=/data", "name=x", "--suite", "paper", "--out", "runs/p"],
        ["suite", "data_root=/data", "A.pth", "--suite", "paper", "B.pth", "name=x", "--out", "runs/p"],
        ["suite", "--suite", "paper", "--out", "runs/p", "A.pth", "data_root=/data", "B.pth", "name=x"],
        ["suite", "A.pth", "B.pth", "--suite", "paper", "--labels", "a", "b", "data_root=/data", "name=x",
         "--out", "runs/p"],
    ],
)
def test_suite_overrides_are_read_wherever_they_are_written(argv: list[str]) -> None:
    args = parse_command_line(argv)
    assert args.labels in (None, ["a", "b"])
    assert args.checkpoints == [Path("A.pth"), Path("B.pth")]
    assert args.overrides == ["data_root=/data", "name=x"]
    assert (args.suite, args.out) == ("paper", Path("runs/p"))


def test_finetune_overrides_follow_or_precede_the_checkpoint() -> None:
    a = parse_command_line(["finetune", "C.pth", "--dataset", "cub200", "--out", "o", "lr=0.1", "steps=5"])
    b = parse_command_line(["finetune", "lr=0.1", "C.pth", "steps=5", "--dataset", "cub200", "--out", "o"])
    assert a.checkpoint == b.checkpoint == Path("C.pth")
    assert a.overrides == b.overrides == ["lr=0.1", "steps=5"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["suite", "A.pth", "--suite", "paper", "--ou", "runs/p"], "--ou"),  # no prefix matching
        (["suite", "A.pth", "--suite", "paper", "--gpus", "8"], "--gpus"),  # an option suite lacks
        (["leaderboard", "runs", "--out", "b", "--with-pub"], "--with-pub"),
        (["knn", "C.pth", "--dataset", "digits", "--out", "o", "k=3"], "k=3"),  # knn takes no overrides
        (["finetune", "C.pth", "D.pth", "--dataset", "digits", "--out", "o"], "D.pth"),  # one checkpoint
    ],
)
def test_unknown_options_exit_2_with_one_line_naming_them(argv: list[str], named: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err


@pytest.fixture(scope="module")
def checkpoint_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = build_backbone("resnet18_small_stem")
    checkpoint = base / "r18.pth"
    torch.save(model.state_dict(), checkpoint)
    fixtures.write_cub(base / "data", num_classes=3, per_class=4, size=16)
    return checkpoint, base / "data"


def _suite_file(tmp_path: Path) -> Path:
    suite = tmp_path / "mine.yaml"
    suite.write_text(
        """
name: mine
data_root: /nowhere
tasks:
  - name: cub-knn
    task: knn
    dataset: cub200
    root: ${data_root}/CUB_200_2011
    options: {image-size: 16, batch-size: 8, workers: 0, knn: ["3:0.07"], primary: "3:0.07"}
"""
    )
    return suite


def test_suite_command_applies_an_override_written_before_the_options(
    checkpoint_and_data: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    checkpoint, data = checkpoint_and_data
    out = tmp_path / "results"
    argv = ["suite", str(checkpoint), f"data_root={data}", "--suite", str(_suite_file(tmp_path))]
    assert main([*argv, "--out", str(out)]) == 0
    records = list(out.rglob("result.json"))
    assert len(records) == 1
    record = read_record(records[0])
    assert record.status == "ok" and record.dataset["root"] == str(data / "CUB_200_2011")
    assert "suite: 1 ran" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "named"), [("data_rot=/data", "data_rot"), ("tasks.0.seedz=2", "seedz")]
)
def test_suite_override_of_an_unknown_key_starts_nothing(
    checkpoint_and_data: tuple[Path, Path], tmp_path: Path, capsys, override: str, named: str
) -> None:
    checkpoint, _ = checkpoint_and_data
    out = tmp_path / "results"
    argv = ["suite", str(checkpoint), "--suite", str(_suite_file(tmp_path)), "--out", str(out), override]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and "Traceback" not in err, err
    assert not out.exists()


def test_old_output_spellings_still_work_and_say_they_are_deprecated(
    checkpoint_and_data: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    checkpoint, _ = checkpoint_and_data
    for old in ("-o", "--output"):
        target = tmp_path / f"converted{old}.pth"
        assert main(["convert", str(checkpoint), "--to", "torchvision", old, str(target)]) == 0
        assert target.is_file()
        err = capsys.readouterr().err
        assert f"sslbench convert: {old} is deprecated; use --out" in err
    (tmp_path / "records").mkdir()
    assert main(["leaderboard", str(tmp_path / "records"), "-o", str(tmp_path / "board")]) == 0
    assert "-o is deprecated; use --out" in capsys.readouterr().err
    assert (tmp_path / "board" / "leaderboard.md").is_file()


def test_make_fixture_takes_dataset_names_and_the_old_spellings(tmp_path: Path, capsys) -> None:
    assert main(["make-fixture", "cub200", "--out", str(tmp_path / "new"), "--classes", "2"]) == 0
    captured = capsys.readouterr()
    assert "--dataset cub200 --root" in captured.out and not captured.err
    assert main(["make-fixture", "cub", str(tmp_path / "old"), "--classes", "2"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "sslbench make-fixture: cub is deprecated; use cub200" in err
    assert "sslbench make-fixture: the positional OUT is deprecated; use --out OUT" in err
    new = sorted(p.relative_to(tmp_path / "new") for p in (tmp_path / "new").rglob("*"))
    assert new == sorted(p.relative_to(tmp_path / "old") for p in (tmp_path / "old").rglob("*"))
    assert main(["make-fixture", "cub200"]) == 2
    assert "--out DIR" in capsys.readouterr().err


def test_finetune_set_is_a_deprecated_spelling_of_trailing_overrides(capsys) -> None:
    from sslbench.evaluate.finetune_cli import _overrides

    args = parse_command_line(
        ["finetune", "C.pth", "--dataset", "digits", "--out", "o", "--set", "coretuning.eta=1", "steps=3"]
    )
    assert _overrides(args) == ["coretuning.eta=1", "steps=3"]
    assert "--set KEY=VALUE is deprecated" in capsys.readouterr().err



def test_pretrain_out_override_is_a_deprecated_spelling_of_out(tmp_path: Path, capsys) -> None:
    # a bad queue size stops the run before anything is written: only the parsing is exercised
    argv = ["pretrain", "--config", "mocov2_tiny", f"out={tmp_path / 'old'}", "moco.queue_size=100"]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "sslbench pretrain: the override out=DIR is deprecated; use --out DIR"
    assert "moco.queue_size=100 must be a multiple" in err[1] and len(err) == 2
    assert main(["pretrain", "--config", "nope", "--out", str(tmp_path / "new")]) == 2
    assert "config nope: no such file, nor a shipped config in pretrain/ (mocov1, mocov1_ft" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "old").exists() and not (tmp_path / "new").exists()
