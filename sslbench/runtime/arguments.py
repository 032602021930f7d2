"""The command-line options every training command shares (pretrain, linear, finetune)."""

from __future__ import annotations

import argparse

from sslbench.runtime.resume import ALLOW_CHANGE_FLAG


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        ALLOW_CHANGE_FLAG,
        dest="allow_config_change",
        action="store_true",
        help="with --resume: continue a run whose settings changed, recording the change and its step",
    )
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write the metrics as TensorBoard scalars under OUT/tensorboard (needs tensorboard)",
    )
