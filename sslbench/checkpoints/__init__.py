"""Checkpoint readers (any format -> canonical), writers, and format detection."""

from sslbench.checkpoints.canonical import CanonicalCheckpoint
from sslbench.checkpoints.formats import FORMATS
from sslbench.checkpoints.readers import read_checkpoint
from sslbench.checkpoints.writers import WRITERS

__all__ = ["FORMATS", "WRITERS", "CanonicalCheckpoint", "read_checkpoint"]
