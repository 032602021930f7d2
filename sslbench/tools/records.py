"""Result records: the self-describing ``result.json`` every run leaves in its ``--out`` folder.

Schema version 1 (accuracies and APs in percent)::

    schema_version   1
    task             knn | linear | finetune | detection | pretrain
    protocol         {"name": str, "source": str, "settings": {...}}   full settings, as run
    dataset          {"name": str, "root": str|null, "split": str, ...}
    metrics          {name: float}                                     e.g. top1, top5, mean_per_class
    checkpoint       {"path", "sha256", "format", "key", "arch", "label"}
    seed             int
    software         {"sslbench", "git", "python", "torch", "cuda", "gpu"}
    started_at, finished_at   ISO 8601 UTC
    status           ok | failed;   error: str | null
    extra            free-form details (grids, per-k tables, paths of artefacts)

Records are validated on write and on read and written atomically.
"""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from sslbench import __version__
from sslbench.atomic import write_json
from sslbench.errors import RecordError

SCHEMA_VERSION = 1
RECORD_NAME = "result.json"
TASKS = ("knn", "linear", "finetune", "detection", "pretrain")
_REQUIRED = ("task", "protocol", "dataset", "metrics", "checkpoint", "seed")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def software_info() -> dict[str, Any]:
    """Versions that decide whether two numbers are comparable."""
    cuda = torch.cuda.is_available()
    return {
        "sslbench": __version__,
        "git": _git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
    }


@dataclass
class ResultRecord:
    task: str
    protocol: dict[str, Any]
    dataset: dict[str, Any]
    metrics: dict[str, float]
    checkpoint: dict[str, Any]
    seed: int
    software: dict[str, Any] = field(default_factory=software_info)
    started_at: str = field(default_factory=utc_now)
    finished_at: str | None = None
    status: str = "ok"
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def validate(self, where: str = "record") -> ResultRecord:
        problems = []
        if self.task not in TASKS:
            problems.append(f"task {self.task!r} is not one of {TASKS}")
        if not isinstance(self.protocol, dict) or not isinstance(self.protocol.get("name"), str):
            problems.append("protocol needs a 'name'")
        elif not isinstance(self.protocol.get("settings", {}), dict):
            problems.append("protocol.settings must be a mapping")
        if not isinstance(self.dataset, dict) or not isinstance(self.dataset.get("name"), str):
            problems.append("dataset needs a 'name'")
        if not isinstance(self.checkpoint, dict) or "sha256" not in self.checkpoint:
            problems.append("checkpoint needs a 'sha256'")
        if not isinstance(self.metrics, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in self.metrics.items()
        ):
            problems.append("metrics must map names to numbers")
        if self.status not in ("ok", "failed"):
            problems.append(f"status {self.status!r} is not ok|failed")
        if self.status == "ok" and not self.metrics:
            problems.append("a successful record needs metrics")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            problems.append("seed must be an integer")
        if problems:
            raise RecordError(f"{where}: invalid result record: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {"schema_version": data.pop("schema_version"), **data}

    @classmethod
    def from_dict(cls, data: Any, where: str = "record") -> ResultRecord:
        if not isinstance(data, dict):
            raise RecordError(f"{where}: a result record is a JSON object, found {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RecordError(
                f"{where}: schema_version {version!r} is unknown (this release reads {SCHEMA_VERSION})"
            )
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise RecordError(f"{where}: invalid result record: missing {', '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        record = cls(**{k: v for k, v in data.items() if k in known})
        return record.validate(where)


def write_record(out_dir: str | Path, record: ResultRecord) -> Path:
    """Validate ``record``, stamp its finish time, and write ``out_dir/result.json`` atomically."""
    if record.finished_at is None:
        record.finished_at = utc_now()
    path = Path(out_dir) / RECORD_NAME
    record.validate(str(path))
    write_json(path, record.to_dict())
    return path


def read_record(path: str | Path) -> ResultRecord:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path}: not a readable JSON record ({exc})") from None
    return ResultRecord.from_dict(data, str(path))
