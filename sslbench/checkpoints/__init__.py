"""Checkpoint readers (any format -> canonical), writers, and format detection.

The names below load lazily (PEP 562) so that importing the CLI does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CanonicalCheckpoint": "sslbench.checkpoints.canonical",
    "FORMATS": "sslbench.checkpoints.formats",
    "read_checkpoint": "sslbench.checkpoints.readers",
    "WRITERS": "sslbench.checkpoints.writers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sslbench.checkpoints' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
