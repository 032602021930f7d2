"""Detectron2 stays optional: without it ``sslbench detect`` explains how to install it, and the
rest of sslbench imports and runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoint_sources import resnet

from sslbench.cli import main


@pytest.fixture
def no_detectron2(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "detectron2" or m.startswith("detectron2.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "detectron2", None)  # makes `import detectron2` raise ImportError


def test_detect_without_detectron2_prints_install_hint(
    no_detectron2: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "r18.pth"  # a readable ResNet: the checkpoint is read before detectron2 is needed
    torch.save(resnet("resnet18").state_dict(), path)
    code = main(["detect", str(path), "--task", "voc", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0
    assert "detectron2" in err and "Docker image" in err and "build it from source" in err
    assert "pip install --no-build-isolation" in err
    assert not (tmp_path / "out").exists()


def test_other_commands_work_without_detectron2(
    no_detectron2: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "r18.pth"
    torch.save(resnet("resnet18").state_dict(), path)
    assert main(["inspect", str(path), "--json"]) == 0
    assert '"arch": "resnet18"' in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "detect" in capsys.readouterr().out


def test_importing_sslbench_does_not_import_detectron2() -> None:
    code = (
        "import sys; import sslbench, sslbench.cli, sslbench.transfer.cli; "
        "sslbench.cli.build_parser(); sys.exit('detectron2' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, timeout=120
    )
    assert result.returncode == 0
