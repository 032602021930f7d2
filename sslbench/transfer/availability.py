"""Whether Detectron2 can be imported, and what to do when it cannot."""

from __future__ import annotations

import importlib

from sslbench.errors import SslbenchError

INSTALL_HINT = (
    "Detectron2 is on no package registry. Run `sslbench detect` in the sslbench Docker image, which "
    "builds it, or build it from source into this environment (torch must be installed first): "
    "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git' "
    "(details: https://detectron2.readthedocs.io/en/latest/tutorials/install.html)"
)


class Detectron2Missing(SslbenchError):
    """``sslbench detect`` needs Detectron2 and it is not importable."""


def require_detectron2() -> None:
    """Import Detectron2 (and the parts ``sslbench detect`` uses) or explain how to install it."""
    try:
        for module in ("detectron2", "detectron2.engine", "detectron2.evaluation"):
            importlib.import_module(module)
    except ImportError as exc:
        raise Detectron2Missing(f"detectron2 cannot be imported ({exc}). {INSTALL_HINT}") from None
