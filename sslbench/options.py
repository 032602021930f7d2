"""Argument types for the command line: a bad value is refused while parsing, naming its option.

argparse turns an :class:`argparse.ArgumentTypeError` raised here into one line,
``sslbench CMD: error: argument --OPTION: <why>``, and exit status 2, before any work starts.
"""

from __future__ import annotations

import argparse
import math

# Largest accepted crop/image side. The protocols use 224 (detection up to 1333); one 4096-pixel RGB
# float32 image is 200 MB, so anything above is a typo that would otherwise exhaust memory.
MAX_IMAGE_SIZE = 4096
# Smallest: ResNets downsample by 32 (8 for the small-stem variants).
MIN_IMAGE_SIZE = 8


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, sizes, iterations)."""
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (worker counts)."""
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, temperatures)."""
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (weight decay)."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def unit_fraction(text: str) -> float:
    """A number in (0, 1] (crop scales, fractions of training)."""
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def image_size(text: str) -> int:
    """A crop side in pixels, MIN_IMAGE_SIZE..MAX_IMAGE_SIZE (refused before anything is allocated)."""
    value = int(_number(text, int))
    if not MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(
            f"expected {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels, got {text!r}"
        )
    return value


def knn_setting(text: str) -> tuple[int, float]:
    """``K:T``: k >= 1 neighbours voting with weight exp(sim / T), T a finite number > 0."""
    k_text, sep, t_text = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected K:T such as 20:0.07, got {text!r}")
    try:
        return positive_int(k_text), positive_float(t_text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected K:T with K an integer >= 1 and T a number > 0 (such as 20:0.07), got {text!r}"
        ) from None
