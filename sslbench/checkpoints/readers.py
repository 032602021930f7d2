"""Read any supported checkpoint into a :class:`CanonicalCheckpoint` (the hub every converter uses)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslbench.checkpoints.canonical import (
    CanonicalCheckpoint,
    StateDict,
    check_values,
    infer_arch,
    match_backbone,
)
from sslbench.checkpoints.formats import (
    FORMATS,
    SSLBENCH_FORMAT,
    SSLBENCH_FORMAT_VERSION,
    Format,
    detect_format,
)
from sslbench.checkpoints.loading import load_file, sha256_of
from sslbench.errors import CheckpointError
from sslbench.models.archs import check_arch
from sslbench.models.vit_archs import is_vit_arch, parse_vit_arch


def _describe_structure(obj: Mapping[str, Any]) -> str:
    parts = []
    for name, value in list(obj.items())[:12]:
        if isinstance(value, Mapping) and value:
            sample = ", ".join(list(map(str, value))[:3])
            parts.append(f"{name!s} ({len(value)} entries: {sample}, ...)")
        else:
            parts.append(str(name))
    return "; ".join(parts)


def _unknown_format(path: Path, obj: Mapping[str, Any]) -> CheckpointError:
    known = "\n".join(f"  {f.name:12s} {f.source}" for f in FORMATS.values())
    return CheckpointError(
        f"{path}: unrecognised checkpoint structure. Top level: {_describe_structure(obj)}.\n"
        f"Known formats (force one with --from, pick a sub-dict with --key):\n{known}"
    )


def _select_format(path: Path, obj: Mapping[str, Any], forced: str | None) -> Format:
    if forced is not None:
        if forced not in FORMATS:
            raise CheckpointError(f"unknown format {forced!r}; expected one of {', '.join(FORMATS)}")
        return FORMATS[forced]
    found = detect_format(obj)
    if len(found) > 1:
        raise CheckpointError(f"{path}: matches several formats ({', '.join(found)}); choose one with --from")
    if not found:
        raise _unknown_format(path, obj)
    return FORMATS[found[0]]


def _state_dict_of(
    path: Path, obj: Mapping[str, Any], fmt: Format, key: str | None
) -> tuple[Any, str | None]:
    if fmt.entries == (None,):
        if key is not None:
            raise CheckpointError(f"{path}: format {fmt.name} is a plain state dict; --key does not apply")
        return obj, None
    if key is not None and key not in fmt.entries:
        raise CheckpointError(
            f"{path}: --key {key!r} is not a state dict of format {fmt.name} (expected one of "
            f"{', '.join(str(e) for e in fmt.entries)})"
        )
    entry = key or next((e for e in fmt.entries if isinstance(obj.get(e), Mapping)), fmt.entries[0])
    if entry not in obj:
        raise CheckpointError(
            f"{path}: format {fmt.name} expects an entry {entry!r}; top level has {list(obj)}"
        )
    return obj[entry], entry


def _prefix_of(fmt: Format, obj: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    if fmt.name == SSLBENCH_FORMAT:
        version = obj.get("format_version")
        if version != SSLBENCH_FORMAT_VERSION:
            raise CheckpointError(
                f"sslbench checkpoint format_version {version!r} is not supported "
                f"(this release reads {SSLBENCH_FORMAT_VERSION})"
            )
        return str(obj["backbone_prefix"])
    for prefix in fmt.prefixes:
        if any(k.startswith(prefix) for k in state):
            return prefix
    raise CheckpointError(f"no key starts with any of {fmt.prefixes} (format {fmt.name})")


def _group(key: str) -> str:
    parts = key.split(".")
    depth = 2 if parts[0] == "module" and len(parts) > 1 else 1
    return ".".join(parts[:depth])


def _as_tensor(value: Any, where: str) -> torch.Tensor:
    if not isinstance(value, np.ndarray):
        return value
    try:
        return torch.from_numpy(np.array(value, order="C", copy=True))
    except TypeError:
        raise CheckpointError(f"{where}: an array of dtype {value.dtype} is not numeric") from None


def check_any_arch(arch: str) -> str:
    """``arch`` if it names a ResNet or a ViT sslbench builds; CheckpointError otherwise."""
    try:
        if is_vit_arch(arch):
            parse_vit_arch(arch)
        else:
            check_arch(arch)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    return arch


def read_checkpoint(
    path: str | Path,
    fmt: str | None = None,
    key: str | None = None,
    arch: str | None = None,
    trust: bool = False,
) -> CanonicalCheckpoint:
    """Read ``path`` (any supported format) into the canonical torchvision ResNet or timm ViT backbone.

    ``fmt`` forces a format (default: detected from the file's structure), ``key`` picks a state
    dict entry (``model_ema``, ``student``), ``arch`` forces the architecture (default: inferred from
    the keys and shapes), ``trust`` allows arbitrary pickled types (``--trust-checkpoint``).
    """
    path = Path(path)
    obj, container = load_file(path, trust=trust)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: not a checkpoint: the top level is a {type(obj).__name__}, not a dict"
        )
    chosen = _select_format(path, obj, fmt)
    state, entry = _state_dict_of(path, obj, chosen, key)
    where = f"{path} (format {chosen.name}" + (f", entry {entry!r}" if entry else "") + ")"
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: expected a state dict, found a {type(state).__name__}")
    try:
        prefix = _prefix_of(chosen, obj, state)
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc}") from None

    backbone: StateDict = {}
    dropped: Counter[str] = Counter()
    for name, value in state.items():
        if not name.startswith(prefix):
            dropped[_group(name)] += 1
            continue
        canonical = name[len(prefix) :]
        if chosen.rename is not None:
            canonical = chosen.rename(canonical)
        if chosen.heads and canonical.startswith(chosen.heads):
            dropped[prefix + canonical.split(".")[0]] += 1
            continue
        if not isinstance(value, (torch.Tensor, np.ndarray)):
            raise CheckpointError(f"{where}: {name} holds a {type(value).__name__}, not a tensor")
        if canonical in backbone:  # e.g. torchvision's old and new MLP names for one layer
            raise CheckpointError(f"{where}: {name} and another key both name {canonical}")
        backbone[canonical] = _as_tensor(value, f"{where}: {name}")

    if arch is None:
        arch = infer_arch(backbone, where, chosen.name)
    else:
        check_any_arch(arch)
        try:
            looks_like = infer_arch(backbone, where, chosen.name)
        except CheckpointError:
            looks_like = None
        if looks_like not in (None, arch):
            where += f" [its keys look like {looks_like}]"
    if prefix:
        where += f" after removing the prefix {prefix!r}"
    backbone, filled = match_backbone(backbone, arch, where, chosen.file_key)
    check_values(backbone, where)
    others = tuple(str(k) for k in obj if k != entry) if entry else ()
    return CanonicalCheckpoint(
        state_dict=backbone,
        arch=arch,
        source_format=chosen.name,
        source_path=str(path),
        sha256=sha256_of(path),
        key=entry,
        container=container,
        dropped=dict(sorted(dropped.items())),
        other_entries=others,
        filled=filled,
    )
