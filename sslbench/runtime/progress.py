"""Progress a person can read: a tqdm bar on a terminal, plain lines in a cluster log; metrics files.

* :class:`Progress`: on a TTY a tqdm bar; otherwise (Slurm, ``nohup``, a pipe) one line every
  ``SSLBENCH_LOG_SECONDS`` seconds (default 60) and one at the end: step, images/s, ETA.
* :class:`MetricsLog`: every training run appends its metrics to ``OUT/metrics.jsonl``, one JSON
  object a line; with ``tensorboard=True`` the numbers also go to ``OUT/tensorboard/`` as scalars.
* :class:`Eta`: the remaining time of a whole made of pieces (a fine-tune grid), from the pace so far.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from tqdm import tqdm

from sslbench.errors import ConfigError

LOG_SECONDS_VARIABLE = "SSLBENCH_LOG_SECONDS"
DEFAULT_LOG_SECONDS = 60.0
METRICS_NAME = "metrics.jsonl"
T = TypeVar("T")
TENSORBOARD_DIR = "tensorboard"


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``?`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def log_seconds() -> float:
    """Seconds between plain progress lines, from ``SSLBENCH_LOG_SECONDS``."""
    text = os.environ.get(LOG_SECONDS_VARIABLE, "")
    try:
        value = float(text) if text else DEFAULT_LOG_SECONDS
    except ValueError:
        value = float("nan")
    if not value >= 0 or not math.isfinite(value):
        raise ConfigError(f"{LOG_SECONDS_VARIABLE}={text!r}: expected a number of seconds >= 0")
    return value


class Progress:
    """Steps ``initial..total`` of one loop; ``images_per_step`` turns the step rate into images/s."""

    def __init__(
        self,
        total: int,
        desc: str,
        initial: int = 0,
        images_per_step: int = 0,
        enabled: bool = True,
        stream: IO[str] | None = None,
    ) -> None:
        self.total, self.desc, self.step, self.images_per_step = total, desc, initial, images_per_step
        self.enabled, self.stream = enabled, stream if stream is not None else sys.stderr
        self.started, self.first_step = time.monotonic(), initial
        self.postfix: dict[str, str] = {}
        self.bar = None
        self.every = log_seconds()
        self.last_line, self.last_step = self.started, initial
        if enabled and _is_terminal(self.stream):
            self.bar = tqdm(
                total=total, initial=initial, desc=desc, unit="step", file=self.stream, dynamic_ncols=True
            )

    def update(self, steps: int = 1) -> None:
        self.step += steps
        if self.bar is not None:
            self.bar.update(steps)
        elif self.enabled and time.monotonic() - self.last_line >= self.every:
            self._line()

    def note(self, **values: float) -> None:
        """Values shown beside the progress (``loss=0.31``)."""
        self.postfix.update({k: f"{v:.4g}" for k, v in values.items()})
        if self.bar is not None:
            self.bar.set_postfix(self.postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.step > self.last_step:
            self._line()

    def _line(self) -> None:
        now = time.monotonic()
        self.last_line, self.last_step = now, self.step
        done, elapsed = self.step - self.first_step, now - self.started
        rate = done / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - self.step) / rate if rate > 0 else float("nan")
        parts = [f"{self.desc}: step {self.step}/{self.total}"]
        if self.images_per_step:
            parts.append(f"{rate * self.images_per_step:.1f} images/s")
        else:
            parts.append(f"{rate:.2f} steps/s")
        parts.append(f"ETA {format_duration(eta)}")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        print("  ".join(parts), file=self.stream, flush=True)


def tracked(items: Sequence[T], desc: str, enabled: bool = True) -> Iterator[T]:
    """``items`` one by one, with a :class:`Progress` of one step per item."""
    bar = Progress(len(items), desc, enabled=enabled)
    for item in items:
        yield item
        bar.update()
    bar.close()


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class MetricsLog:
    """``OUT/metrics.jsonl`` (appended) and, when asked, TensorBoard scalars under ``OUT/tensorboard``.
    Only the main rank writes (``enabled=False`` elsewhere)."""

    def __init__(self, out: Path, enabled: bool = True, tensorboard: bool = False) -> None:
        self.path = Path(out) / METRICS_NAME
        self.enabled = enabled
        self.writer: Any = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "--tensorboard: the tensorboard package is not installed "
                    "(pip install 'sslbench[logging]')"
                ) from None
            self.writer = SummaryWriter(str(Path(out) / TENSORBOARD_DIR))

    def write(self, run: str, step: int, **values: Any) -> None:
        """One line ``{"time", "run", "step", **values}``; the numeric values also as scalars."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        values = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}
        row = {"time": round(time.time(), 3), "run": run, "step": step, **values}
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(row, allow_nan=False, default=str) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and value is not None:
                    self.writer.add_scalar(f"{run}/{key}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Eta:
    """The remaining time of ``total`` units of work (steps over a grid), at the pace of the units run
    in this process so far (units done earlier, e.g. skipped on resume, do not count toward the pace)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.timed, self.seconds = total, 0, 0, 0.0

    def add(self, units: int, seconds: float | None) -> None:
        """``units`` finished; ``seconds`` they took here (``None``: done in an earlier run)."""
        self.done += units
        if seconds is not None:
            self.timed, self.seconds = self.timed + units, self.seconds + seconds

    def remaining(self) -> float:
        return (self.total - self.done) * self.seconds / self.timed if self.timed else float("nan")

    def line(self, what: str) -> str:
        return f"{what}: {self.done}/{self.total} steps done, ETA {format_duration(self.remaining())}"
