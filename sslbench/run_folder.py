"""What a command may do with the folder it writes into: never replace earlier results unasked.

Every command that writes a result into ``--out`` (or a dataset into a folder) calls one of these
checks before it starts work, so a repeated command line fails at once, with one line naming what is
there, instead of replacing an earlier run. ``--overwrite`` says the replacement is intended.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sslbench.errors import ConfigError

BACKBONE_SOURCE_NAME = "backbone_source.json"


def _listing(folder: Path, limit: int = 4) -> str:
    names = sorted(entry.name for entry in folder.iterdir())
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def refuse_existing_record(out: Path, record_name: str, option: str = "--out") -> None:
    """Refuse when ``out/record_name`` holds a record other than a failed run's (a failed run's
    record is what a re-run is meant to replace)."""
    path = Path(out) / record_name
    if not path.exists():
        return
    if path.is_file():
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("status") == "failed":
                return
        except (OSError, UnicodeDecodeError, ValueError, AttributeError, RecursionError):
            pass
    raise ConfigError(
        f"{option} {out}: already holds {record_name}; pass --overwrite to replace it, or choose another "
        f"{option}"
    )


def refuse_previous_run(out: Path, markers: Sequence[str], what: str) -> None:
    """Refuse to start a new ``what`` in ``out`` when it holds any of ``markers`` (a previous run's
    files); ``--resume`` continues that run instead."""
    found = [name for name in markers if (Path(out) / name).exists()]
    if found:
        raise ConfigError(
            f"--out {out}: holds a previous {what} ({', '.join(found)}); pass --resume to continue it, "
            "or choose another --out"
        )


def refuse_unwritable(folder: Path) -> None:
    """Fail now, without creating anything, when ``folder`` could not be created or written: its
    nearest existing ancestor is not a folder, or is not writable (an OSError, as writing would)."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a folder, cannot hold the output", str(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "not writable", str(existing))


def refuse_existing_file(path: Path, option: str) -> None:
    """Refuse to replace the file ``path`` (given as ``option``)."""
    if Path(path).exists():
        raise ConfigError(
            f"{option} {path}: already exists; pass --overwrite to replace it, or choose another {option}"
        )


def refuse_non_empty(folder: Path, what: str) -> None:
    """Refuse to write ``what`` into ``folder`` when it already holds anything."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise ConfigError(
            f"{folder}: not empty (holds {_listing(folder)}); writing {what} there would mix with or "
            "replace those files; pass --overwrite if that is intended, or choose an empty folder"
        )


def check_backbone_source(out: Path, checkpoint: dict[str, Any], resume: bool) -> None:
    """On ``--resume``, refuse a checkpoint whose sha256 differs from the one the run started from
    (recorded in ``out/backbone_source.json``); then record this checkpoint there."""
    path = Path(out) / BACKBONE_SOURCE_NAME
    if resume and path.is_file():
        try:
            started = json.loads(path.read_text(encoding="utf-8"))["sha256"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{path}: unreadable ({exc}); cannot tell which checkpoint the run used"
            ) from None
        if started != checkpoint["sha256"]:
            raise ConfigError(
                f"--resume: {out} was started from checkpoint sha256 {str(started)[:12]}..., this one is "
                f"{checkpoint['sha256'][:12]}... ({checkpoint.get('path')}); resume with the same "
                "checkpoint, or choose another --out"
            )
    from sslbench.atomic import write_json

    write_json(path, {"sha256": checkpoint["sha256"], "path": checkpoint.get("path")})
