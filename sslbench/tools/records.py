"""Result records: the self-describing ``result.json`` every run leaves in its ``--out`` folder.

Schema version 1 (accuracies and APs in percent)::

    schema_version   1
    task             knn | linear | finetune | detection | pretrain
    protocol         {"name": str, "source": str, "settings": {...}}   full settings, as run
    dataset          {"name": str, "root": str|null, "split": str, ...}
    metrics          {name: float}      finite, in [0, 100]            e.g. top1, top5, mean_per_class
    checkpoint       {"path", "sha256", "format", "key", "arch"}, and "zoo" (the entry's name) for zoo:NAME
    seed             int
    software         {"sslbench", "git", "python", "torch", "cuda", "gpu"}     optional
    started_at, finished_at   ISO 8601 UTC, or null                            optional
    status           ok | failed;   error: str | null                           optional (ok, null)
    extra            free-form details (grids, per-k tables, paths of artefacts) optional

Records are validated on write and on read, and written atomically as strict JSON: a non-finite
number outside ``metrics`` (a diverged loss in a history, an undefined AP) is written as null, and a
non-finite or out-of-range metric, a malformed timestamp or a non-integer seed is refused. Reading
accepts every schema version up to this one: a record of version ``n`` goes through ``UPGRADES[n]``
(a function from a version-``n`` dict to a version-``n + 1`` dict) until it reaches
:data:`SCHEMA_VERSION`; an optional field a writer left out is read as its "unknown" value
(:data:`OPTIONAL_FIELDS`), never as the reader's own time or software. Changing the schema means
bumping the version and adding its upgrade.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from sslbench import __version__
from sslbench.atomic import finite_or_null, write_json
from sslbench.errors import RecordError

SCHEMA_VERSION = 1
RECORD_NAME = "result.json"
TASKS = ("knn", "linear", "finetune", "detection", "pretrain")
_REQUIRED = ("task", "protocol", "dataset", "metrics", "checkpoint", "seed")
# What an absent optional field means when a record is read: unknown, not "now" or "this software".
OPTIONAL_FIELDS: dict[str, Callable[[], Any]] = {
    "software": dict,
    "started_at": lambda: None,
    "finished_at": lambda: None,
    "status": lambda: "ok",
    "error": lambda: None,
    "extra": dict,
}
# UPGRADES[n] turns a version-n record (a dict) into a version-(n + 1) record. Version 1 is the first.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


METRIC_RANGE = (0.0, 100.0)  # accuracies and APs, in percent


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 time as an aware datetime (a time without a zone is taken as UTC); ValueError if
    ``text`` is not one."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _metric_problems(metrics: Any) -> list[str]:
    if not isinstance(metrics, dict):
        return ["metrics must map names to numbers"]
    problems = []
    low, high = METRIC_RANGE
    for name, value in metrics.items():
        if not isinstance(name, str) or not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.append(f"metric {name!r} must be a number, found {type(value).__name__}")
        elif not math.isfinite(value):
            problems.append(f"metric {name} is {value} (not finite)")
        elif not low <= value <= high:
            problems.append(f"metric {name} = {value} is outside [{low:g}, {high:g}] (percent)")
    return problems


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
        elif not isinstance(self.dataset.get("options") or {}, dict):
            problems.append("dataset.options must be a mapping")
        if not isinstance(self.checkpoint, dict) or not isinstance(self.checkpoint.get("sha256"), str):
            problems.append("checkpoint needs a 'sha256'")
        elif not isinstance(self.checkpoint.get("path") or "", str):
            problems.append("checkpoint.path must be a string")
        elif not isinstance(self.checkpoint.get("zoo", ""), str):
            problems.append("checkpoint.zoo must be a zoo entry's name (a string)")
        problems += _metric_problems(self.metrics)
        if self.status not in ("ok", "failed"):
            problems.append(f"status {self.status!r} is not ok|failed")
        if self.status == "ok" and not self.metrics:
            problems.append("a successful record needs metrics")
        if self.status == "failed" and not isinstance(self.error, str):
            problems.append("a failed record needs an 'error' message")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            problems.append("seed must be an integer")
        for name in ("software", "extra"):
            if not isinstance(getattr(self, name), dict):
                problems.append(f"{name} must be a mapping")
        for name in ("started_at", "finished_at"):
            value = getattr(self, name)
            try:
                if value is not None:
                    parse_timestamp(value)
            except (TypeError, ValueError):
                problems.append(f"{name} {value!r} is not an ISO 8601 time")
        if problems:
            raise RecordError(f"{where}: invalid result record: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {"schema_version": data.pop("schema_version"), **data}

    @classmethod
    def from_dict(cls, data: Any, where: str = "record") -> ResultRecord:
        """Validate ``data`` (a record of this or an older schema version) and build the record."""
        data = upgrade(data, where)
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise RecordError(f"{where}: invalid result record: missing {', '.join(missing)}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise RecordError(
                f"{where}: invalid result record: unknown fields {', '.join(unknown)} "
                f"for schema version {SCHEMA_VERSION}"
            )
        values = {name: default() for name, default in OPTIONAL_FIELDS.items()}
        values.update(data)
        return cls(**values).validate(where)


def upgrade(data: Any, where: str = "record") -> dict[str, Any]:
    """Bring a record dict of any known schema version to :data:`SCHEMA_VERSION` through ``UPGRADES``."""
    if not isinstance(data, dict):
        raise RecordError(f"{where}: a result record is a JSON object, found {type(data).__name__}")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise RecordError(
            f"{where}: schema_version {version!r} is unknown (this release reads 1 to {SCHEMA_VERSION}"
            + ("; the record was written by a newer sslbench" if newer else "")
            + ")"
        )
    while version < SCHEMA_VERSION:
        data = UPGRADES[version](dict(data))
        version += 1
        if data.get("schema_version") != version:
            raise RecordError(
                f"{where}: the upgrade from schema version {version - 1} did not give {version}"
            )
    return data


def write_record(out_dir: str | Path, record: ResultRecord) -> Path:
    """Validate ``record``, stamp its finish time, and write ``out_dir/result.json`` atomically."""
    if record.finished_at is None:
        record.finished_at = utc_now()
    path = Path(out_dir) / RECORD_NAME
    record.validate(str(path))
    write_json(path, finite_or_null(record.to_dict()))
    return path


def read_record(path: str | Path) -> ResultRecord:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path}: not a readable JSON record ({exc})") from None
    except RecursionError:
        raise RecordError(f"{path}: not a readable JSON record (nested too deeply)") from None
    return ResultRecord.from_dict(data, str(path))
