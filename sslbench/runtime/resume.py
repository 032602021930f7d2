"""Saved training states: reading them safely, and the fingerprint rule for ``--resume``.

A state holds a *fingerprint*: the settings, checkpoint and data the run was started with. Resuming
with a different fingerprint is refused with one line naming the changed keys, unless the command was
given ``--allow-config-change``: then the run continues and the change is recorded with its step.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from sslbench.errors import CheckpointError, ConfigError
from sslbench.runtime.arguments import ALLOW_CHANGE_FLAG


def read_state(path: Path) -> dict[str, Any] | None:
    """The state saved at ``path`` (tensors on the CPU), ``None`` when there is none; a damaged or
    foreign file is a :class:`CheckpointError` naming it."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise CheckpointError(
            f"{path}: damaged or not a saved state, cannot resume from it ({type(exc).__name__}); "
            "delete it to start over"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a saved training state; delete it to start over")
    return state


def read_json_result(path: Path) -> dict[str, Any] | None:
    """A finished piece's JSON result (a grid point's ``point.json``); damaged: one error naming it."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: damaged ({exc}); delete it to run that piece again") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object; delete it to run that piece again")
    return data


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def fingerprint_changes(stored: dict[str, Any], current: dict[str, Any]) -> dict[str, list[Any]]:
    """``{"dotted.key": [stored, current]}`` for every key whose value differs (JSON-normalised)."""
    old = _flatten(json.loads(json.dumps(stored)))
    new = _flatten(json.loads(json.dumps(current)))
    return {
        key: [old.get(key), new.get(key)]
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    }


def check_fingerprint(
    path: Path, stored: dict[str, Any], current: dict[str, Any], what: str, allow_change: bool
) -> dict[str, list[Any]]:
    """The changes from ``stored`` to ``current``; refused (:class:`ConfigError`, naming the keys)
    unless ``allow_change``. ``what`` names the run (``a linear probe``)."""
    changes = fingerprint_changes(stored, current)
    if changes and not allow_change:
        listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in list(changes.items())[:6])
        more = f" and {len(changes) - 6} more" if len(changes) > 6 else ""
        raise ConfigError(
            f"{path}: holds {what} of other settings, checkpoint or data ({listed}{more}); pass "
            f"{ALLOW_CHANGE_FLAG} to continue with the new values (the change is recorded), "
            "or use another --out folder"
        )
    return changes


def change_entry(step: int, changes: dict[str, list[Any]]) -> dict[str, Any]:
    """How a state records an allowed change: the step it took effect at and ``key: [old, new]``."""
    return {"step": step, "changes": changes}


def rng_state(device: torch.device) -> dict[str, Any]:
    """The CPU generator's state, and the device's on CUDA."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
