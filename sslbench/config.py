"""Typed configs: a dataclass schema, a YAML file, then ``key=value`` overrides (OmegaConf).

Unknown keys and wrongly typed values are errors that name the key, so a typo in an override never
silently falls back to a default.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sslbench.errors import ConfigError

T = TypeVar("T")

def shipped_configs(group: str) -> list[str]:
    """Names of the configs shipped in ``sslbench/configs/<group>/`` (without ``.yaml``)."""
    folder = resources.files("sslbench.configs").joinpath(group)
    return sorted(e.name.removesuffix(".yaml") for e in folder.iterdir() if e.name.endswith(".yaml"))


def resolve_config_path(path: str | Path, group: str) -> Path:
    """``path`` as given if it is a file, else the shipped config ``<group>/<path>[.yaml]``."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    folder = resources.files("sslbench.configs").joinpath(group)
    for name in (str(path), f"{path}.yaml"):
        shipped = folder.joinpath(name)
        if shipped.is_file():
            # A regular install unpacks package data, so the resource is a file on disk.
            return Path(str(shipped))
    names = ", ".join(shipped_configs(group))
    raise ConfigError(f"config {path}: no such file, nor a shipped config in {group}/ ({names})")


def _apply_override(config: Any, override: str) -> None:
    """``key=value`` into ``config``; keys may index lists (``tasks.0.seeds=3``), values parse as YAML."""
    key, _, text = override.partition("=")
    value = OmegaConf.from_dotlist([f"value={text}"]).value  # OmegaConf's own value parsing
    OmegaConf.update(config, key, value, merge=True)


def load_config(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Merge ``schema``'s defaults, the YAML at ``path`` and ``overrides`` into a ``schema`` instance."""
    try:
        merged = OmegaConf.structured(schema)
        if path is not None:
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        for override in overrides:
            _apply_override(merged, override)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        source = f"config {path}" if path is not None else "config"
        key = getattr(exc, "full_key", None)
        where = f" (key {key})" if key and key not in str(exc).splitlines()[0] else ""
        raise ConfigError(f"{source}: {str(exc).splitlines()[0]}{where}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain, JSON-able dict of a config dataclass (for records and checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)  # type: ignore[return-value]
