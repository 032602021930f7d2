"""The command-line options every training command shares (pretrain, linear, finetune).

Imported when the command line is built: nothing heavier than argparse here.
"""

from __future__ import annotations

import argparse

ALLOW_CHANGE_FLAG = "--allow-config-change"


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        ALLOW_CHANGE_FLAG,
        dest="allow_config_change",
        action="store_true",
        help="when resuming: continue a run saved with other settings, recording the change and its step "
        "(without it such a resume is refused, naming the changed keys)",
    )
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write the metrics as TensorBoard scalars under OUT/tensorboard (needs tensorboard)",
    )
