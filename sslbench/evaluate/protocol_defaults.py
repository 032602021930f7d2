"""Defaults of the evaluation protocols, each naming its source.

Plain values with no torch, FAISS or scikit-learn import: the command line reads them to build its
options (and show them in ``--help``) without loading the probes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# (k, T): DINO eval_knn (k in 10, 20, 100, 200; T=0.07) and InstDisc (k=200, T=0.1)
KNN_SETTINGS: tuple[tuple[int, float], ...] = ((10, 0.07), (20, 0.07), (100, 0.07), (200, 0.07), (200, 0.1))
PRIMARY_SETTING = (20, 0.07)  # DINO: "20 is usually working the best"
QUERY_CHUNK = 4096  # queries per search: FAISS's own BLAS query block size

WD_RANGE = (-6.0, 5.0)  # ssl-transfer: wd = 1/C over logspace(-6, 5, 45)
C_GRID_SIZE = 45
LBFGS_MAX_ITER = 100  # scikit-learn's default, which ssl-transfer keeps


@dataclass
class SgdSettings:
    """MoCo main_lincls defaults; ``milestones`` are fractions of ``epochs`` (60 and 80 of 100)."""

    epochs: int = 100
    lr: float = 30.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 256
    milestones: tuple[float, ...] = (0.6, 0.8)
    gamma: float = 0.1
    crop_scale: tuple[float, float] = (0.08, 1.0)  # torchvision default; the FT repo uses (0.2, 1)
    seed: int = 0

    def milestone_epochs(self) -> list[int]:
        return [round(f * self.epochs) for f in self.milestones]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["milestones"] = list(self.milestones)
        data["crop_scale"] = list(self.crop_scale)
        data["milestone_epochs"] = self.milestone_epochs()
        return data
