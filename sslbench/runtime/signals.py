"""One signal policy for every loop: SIGTERM or SIGUSR1 -> finish the step, save, exit with 143.

Schedulers send SIGTERM at preemption and (with ``--signal``) SIGUSR1 before the time limit; 143
(128 + SIGTERM) is the status they requeue on. The loop checks :meth:`StopSignal.requested` after
each step; under DDP every rank must stop at the same step, so the flag is combined over the ranks
at sync points only (a collective per step would add a host sync to the hot loop).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from sslbench.errors import SslbenchError

if TYPE_CHECKING:  # the command line imports this module: no torch before a command runs
    from sslbench.runtime.process import Runtime

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: the conventional status of a job stopped by SIGTERM
STOP_CHECK_EVERY = 10  # steps between the ranks' agreement on a stop signal under DDP (a collective)


class TrainingInterrupted(SslbenchError):
    """A stop signal ended the run after saving ``state``; the command's ``--resume`` continues it."""

    def __init__(self, what: str, state: Path, step: int, note: str = "") -> None:
        super().__init__(
            f"{what} stopped by a signal after step {step}; saved {state}{note}; continue with --resume"
        )
        self.state, self.step = state, step


class StopSignal:
    """Set by SIGTERM / SIGUSR1 while :func:`catch_stop_signals` is active."""

    def __init__(self) -> None:
        self.received = False

    def requested(self, runtime: Runtime, at_sync_point: bool = True) -> bool:
        """Whether to stop now: the local flag on one process; under DDP, any rank's flag, looked at
        only where ``at_sync_point`` (the same steps on every rank)."""
        if not runtime.distributed:
            return self.received
        return runtime.any(self.received) if at_sync_point else False


@contextmanager
def catch_stop_signals() -> Iterator[StopSignal]:
    """A :class:`StopSignal` set by the stop signals for the block; the previous handlers come back."""
    stop = StopSignal()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.received = True

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
