"""Shared checks of the bad-input tests: run a command, expect one clear error line, nothing lost."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from sslbench.cli import main
from sslbench.models.resnet import build_backbone

# 16 px crops, one batch, no worker processes: each command runs in a few seconds on a CPU.
TINY = ["--image-size", "16", "--batch-size", "16", "--workers", "0"]


def small_checkpoint(path: Path, seed: int = 0) -> Path:
    """A ``resnet18_small_stem`` state dict, as ``torch.save(model.state_dict())`` writes it."""
    torch.manual_seed(seed)
    torch.save(build_backbone("resnet18_small_stem").state_dict(), path)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every regular file below ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(capsys: pytest.CaptureFixture[str], argv: Sequence[str]) -> tuple[int, str, str]:
    """``sslbench ARGV`` in this process: (exit status, stdout, stderr). argparse's refusals exit
    through SystemExit, as the installed command does."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys: pytest.CaptureFixture[str], argv: Sequence[str], *named: str, code: int = 2) -> str:
    """Run ``argv``; assert it exits with ``code``, its last stderr line is ``sslbench CMD: error: ...``
    naming every string of ``named``, and no traceback was printed. Returns that line."""
    status, _, err = run(capsys, argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == code, err
    assert "Traceback" not in err, err
    last = lines[-1]
    assert last.startswith(f"sslbench {argv[0]}: error: "), err
    for name in named:
        assert name in last, f"{name!r} not in {last!r}"
    return last
