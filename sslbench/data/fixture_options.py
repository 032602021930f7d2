"""The options of ``sslbench make-fixture``: layout names and default sizes (no imports, for a fast CLI).

Fixture layouts are named as ``--dataset`` names the readers; ``cub`` is the old spelling of ``cub200``.
"""

from __future__ import annotations

DEFAULT_CLASSES = 4
DEFAULT_PER_CLASS = 6
DEFAULT_SIZE = 48  # image side, pixels

FIXTURE_DATASETS = ("cub200", "aircraft", "inat18", "imagefolder")
OLD_FIXTURE_NAMES = {"cub": "cub200"}  # deprecated spellings, still accepted
