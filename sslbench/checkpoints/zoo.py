"""Checkpoints by name: ``zoo:NAME`` wherever a checkpoint path is accepted.

The table (``sslbench/configs/zoo/checkpoints.yaml``, or the YAML file ``$SSLBENCH_ZOO`` names)
gives each checkpoint's source, URL, format, architecture and the numbers its source publishes.
A file is downloaded once into ``$SSLBENCH_CACHE/zoo/NAME/`` (default ``~/.cache/sslbench``),
written atomically; its sha256 is recorded beside it on first download (and must equal the table's
``sha256`` when the table pins one) and checked on every later use, so a changed file is refused.
No torch here: ``sslbench zoo list`` stays fast.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sslbench.atomic import atomic_path, write_text
from sslbench.errors import CheckpointError, ConfigError

PREFIX = "zoo:"
TABLE_ENV = "SSLBENCH_ZOO"  # a YAML table used instead of the shipped one (mirrors, tests)
CACHE_ENV = "SSLBENCH_CACHE"
DEFAULT_CACHE = Path("~/.cache/sslbench")
DIGEST_NAME = "sha256"  # beside the downloaded file: its digest at first download

_REQUIRED = ("name", "source", "url", "format", "arch", "citation")
_PUBLISHED = ("protocol", "dataset", "metric", "value", "cite")


@dataclass(frozen=True)
class ZooEntry:
    """One named checkpoint; ``published``: the source's own numbers, each with where it says so."""

    name: str
    source: str
    url: str
    format: str
    arch: str
    citation: str
    published: tuple[dict[str, Any], ...] = ()
    sha256: str | None = None
    key: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1] or "checkpoint"


def is_zoo_name(text: str | os.PathLike[str]) -> bool:
    return str(text).startswith(PREFIX)


def table_path() -> tuple[str, Any]:
    """Where the table is read from (for messages) and a handle to read it."""
    override = os.environ.get(TABLE_ENV)
    if override:
        return override, Path(override)
    shipped = resources.files("sslbench.configs").joinpath("zoo", "checkpoints.yaml")
    return "sslbench/configs/zoo/checkpoints.yaml", shipped


def _check_published(label: str, number: dict[str, Any]) -> None:
    """A published number names a leaderboard column (protocol, dataset, metric), is a finite
    percentage and says where it is printed."""
    from sslbench.tools.published import published_key

    try:
        published_key(number["protocol"], number["dataset"], number["metric"])
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    if not math.isfinite(number["value"]) or not 0 <= number["value"] <= 100:
        raise ConfigError(f"{label}: value {number['value']!r} is not a percentage in [0, 100]")
    if not isinstance(number["cite"], str) or not number["cite"].strip():
        raise ConfigError(f"{label}: cite must name where the number is printed")


def _entry(where: str, index: int, raw: Any) -> ZooEntry:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: checkpoints[{index}] is a {type(raw).__name__}, not a mapping")
    label = f"{where}: checkpoint {raw.get('name', f'#{index}')!s}"
    missing = [k for k in _REQUIRED if not isinstance(raw.get(k), str) or not raw.get(k)]
    if missing:
        raise ConfigError(f"{label}: missing or empty {', '.join(missing)}")
    unknown = sorted(set(raw) - {*_REQUIRED, "published", "sha256", "key"})
    if unknown:
        raise ConfigError(f"{label}: unknown fields {', '.join(unknown)}")
    published = raw.get("published") or []
    if not isinstance(published, list):
        raise ConfigError(f"{label}: published must be a list")
    for position, number in enumerate(published):
        absent = [k for k in _PUBLISHED if not isinstance(number, dict) or k not in number]
        if absent or isinstance(number["value"], bool) or not isinstance(number["value"], (int, float)):
            needs = ", ".join(_PUBLISHED)
            raise ConfigError(f"{label}: each published number needs {needs} (value a number)")
        _check_published(f"{label}: published[{position}]", number)
    columns = [(n["protocol"], n["dataset"], n["metric"]) for n in published]
    if len(set(columns)) < len(columns):
        raise ConfigError(f"{label}: published lists one protocol, dataset and metric twice")
    sha = raw.get("sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        raise ConfigError(f"{label}: sha256 must be 64 hex digits")
    return ZooEntry(
        name=raw["name"],
        source=raw["source"],
        url=raw["url"],
        format=raw["format"],
        arch=raw["arch"],
        citation=raw["citation"],
        published=tuple(dict(n) for n in published),
        sha256=sha.lower() if sha else None,
        key=raw.get("key"),
    )


def load_table() -> dict[str, ZooEntry]:
    """The zoo table, checked: every entry complete, names unique."""
    import yaml

    where, handle = table_path()
    try:
        data = yaml.safe_load(handle.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where} (${TABLE_ENV}): no such file") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: not a readable YAML table: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), list):
        raise ConfigError(f"{where}: expected a mapping with a 'checkpoints' list")
    table: dict[str, ZooEntry] = {}
    for index, raw in enumerate(data["checkpoints"]):
        entry = _entry(where, index, raw)
        if entry.name in table:
            raise ConfigError(f"{where}: checkpoint {entry.name} is listed twice")
        table[entry.name] = entry
    return table


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def cached_file(entry: ZooEntry) -> Path:
    return cache_root() / "zoo" / entry.name / entry.filename


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _download(entry: ZooEntry, target: Path, progress: bool) -> None:
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(entry.url, timeout=60) as response, atomic_path(target) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                tmp.open("wb") as out,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=f"zoo:{entry.name}",
                    disable=not progress,
                    file=sys.stderr,
                ) as bar,
            ):
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CheckpointError(f"zoo:{entry.name}: download of {entry.url} failed: {reason}") from None


def resolve(spec: str, progress: bool = True) -> tuple[Path, ZooEntry]:
    """``zoo:NAME`` -> the cached file (downloaded on first use) and its table entry."""
    name = str(spec).removeprefix(PREFIX)
    table = load_table()
    if name not in table:
        known = ", ".join(table)
        raise CheckpointError(f"zoo:{name}: no such checkpoint; known: {known} (sslbench zoo list)")
    entry = table[name]
    path = cached_file(entry)
    digest_file = path.parent / DIGEST_NAME
    if path.is_file() and digest_file.is_file():
        recorded = digest_file.read_text(encoding="utf-8").strip()
        actual = _sha256(path)
        if actual != recorded:
            raise CheckpointError(
                f"zoo:{name}: {path} changed since its first download (sha256 {actual[:12]}..., recorded "
                f"{recorded[:12]}...); refusing it: delete {path.parent} to download it again"
            )
        return path, entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"zoo:{name}: cannot create the cache folder {path.parent} ({exc.strerror}); "
            f"set ${CACHE_ENV} to a writable folder"
        ) from None
    _download(entry, path, progress)  # no file, or no digest (an interrupted first use): fetch again
    actual = _sha256(path)
    if entry.sha256 is not None and actual != entry.sha256:
        path.unlink()
        raise CheckpointError(
            f"zoo:{name}: the download from {entry.url} has sha256 {actual[:12]}..., "
            f"the table pins {entry.sha256[:12]}...; refused and removed"
        )
    write_text(digest_file, actual + "\n")
    return path, entry
