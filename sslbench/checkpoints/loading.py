"""Open a checkpoint file without running code from it.

Checkpoints are untrusted input: unpickling can execute arbitrary code. PyTorch files are read with
``torch.load(weights_only=True)`` allowing, beyond tensors and containers, only the harmless types
real checkpoints carry (``argparse.Namespace`` in PyContrast and DINO files, NumPy arrays and
scalars). Plain pickles (Detectron2 ``.pkl``) go through an unpickler with the same allow-list.
``trust=True`` (``--trust-checkpoint``) lifts the restriction for files whose source you trust.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors

from sslbench.errors import CheckpointError

_TRUST_HINT = "pass --trust-checkpoint only if you trust where the file came from"


def _numpy_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = np._core.multiarray._reconstruct
        allowed[(module, "scalar")] = np._core.multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = np._core.numeric._frombuffer  # pickle protocol 5 arrays
    for name in dir(np.dtypes):
        if name.endswith("DType"):
            allowed[("numpy.dtypes", name)] = getattr(np.dtypes, name)
    return allowed


_ALLOWED: dict[tuple[str, str], Any] = {
    ("argparse", "Namespace"): argparse.Namespace,
    ("collections", "OrderedDict"): OrderedDict,
    **_numpy_globals(),
}


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _Disallowed(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise _Disallowed(f"{module}.{name}")


def _is_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < header_len < path.stat().st_size


def _load_torch(path: Path, trust: bool) -> Any:
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(list(_ALLOWED.values())):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe: list[str] = []
        with contextlib.suppress(Exception):  # the listing is a courtesy; the refusal stands without it
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        allowed_names = {f"{m}.{n}" for m, n in _ALLOWED}
        unsafe = [u for u in unsafe if u not in allowed_names]
        what = ", ".join(unsafe) if unsafe else str(exc).splitlines()[0]
        raise CheckpointError(
            f"{path}: refused to unpickle types that could run code when loaded ({what}); {_TRUST_HINT}"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {first}"
        ) from None


def _load_pickle(path: Path, trust: bool) -> Any:
    data = path.read_bytes()
    try:
        if trust:
            return pickle.loads(data)
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except _Disallowed as exc:
        raise CheckpointError(
            f"{path}: refused to unpickle {exc}, which could run code when loaded; {_TRUST_HINT}"
        ) from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt pickle: {exc})") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {exc}") from None


def load_file(path: str | Path, trust: bool = False) -> tuple[Any, str]:
    """Return the file's top-level object and its container: ``torch``, ``safetensors`` or ``pickle``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if _is_safetensors(path):
        try:
            return load_safetensors(str(path)), "safetensors"
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from None
    with path.open("rb") as f:
        magic = f.read(2)
    if magic == b"PK":  # a zip archive: torch.save's format (torch.load reports truncation)
        _check_zip_crcs(path)
        return _load_torch(path, trust), "torch"
    if magic[:1] == b"\x80":  # a pickle protocol header: Detectron2 .pkl or a legacy torch.save
        if _looks_like_legacy_torch(path):
            return _load_torch(path, trust), "torch"
        return _load_pickle(path, trust), "pickle"
    raise CheckpointError(
        f"{path}: not a checkpoint (neither a PyTorch zip archive, a safetensors file nor a pickle); "
        f"first bytes {magic!r}"
    )


def _check_zip_crcs(path: Path) -> None:
    """Compare every member of ``torch.save``'s zip archive with the CRC-32 stored beside it (torch
    itself does not, so a flipped bit in a weight would load silently)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): damaged zip archive, {exc}"
        ) from None
    if bad is not None:
        raise CheckpointError(
            f"{path}: damaged: the contents of {bad} do not match their stored CRC-32 (a corrupted copy?)"
        )


def _looks_like_legacy_torch(path: Path) -> bool:
    """Pre-1.6 ``torch.save`` files start with a pickled magic number, not a state dict."""
    try:
        with path.open("rb") as f:
            return _RestrictedUnpickler(f).load() == 0x1950A86A20F9469CFC6C  # torch's legacy magic number
    except Exception:
        return False


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    with Path(path).open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return dict(header.get("__metadata__", {}))
