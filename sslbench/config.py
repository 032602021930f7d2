"""Typed configs: a dataclass schema, a YAML file, then ``key=value`` overrides (OmegaConf).

Unknown keys and wrongly typed values are errors that name the key, so a typo in an override never
silently falls back to a default.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sslbench.errors import ConfigError

T = TypeVar("T")

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(path: str | Path, group: str) -> Path:
    """``path`` as given if it exists, else ``configs/<group>/<path>[.yaml]`` of this checkout."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    for name in (str(path), f"{path}.yaml"):
        shipped = REPO_CONFIGS / group / name
        if shipped.is_file():
            return shipped
    raise ConfigError(f"config {path}: no such file (nor under {REPO_CONFIGS / group})")


def read_yaml_mapping(path: str | Path) -> DictConfig:
    """The YAML file at ``path`` as a mapping; a syntax error, an empty file or a YAML that is not a
    mapping (a list, a number) is a ConfigError naming the file (and the line)."""
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config {path}{where}: not valid YAML ({problem})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config {path}: expected a mapping of keys to values, found a list")
    if not loaded:
        raise ConfigError(f"config {path}: holds no settings (an empty file?)")
    return loaded


def load_config(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Merge ``schema``'s defaults, the YAML at ``path`` and ``overrides`` into a ``schema`` instance."""
    try:
        merged = OmegaConf.structured(schema)
        if path is not None:
            merged = OmegaConf.merge(merged, read_yaml_mapping(path))
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        source = f"config {path}" if path is not None else "config"
        key = getattr(exc, "full_key", None)
        where = f" (key {key})" if key and key not in str(exc).splitlines()[0] else ""
        raise ConfigError(f"{source}: {str(exc).splitlines()[0]}{where}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain, JSON-able dict of a config dataclass (for records and checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)  # type: ignore[return-value]
