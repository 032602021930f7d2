"""How one suite job runs: in this process, as ``torchrun`` processes, or as a submitit job.

A job is one ``sslbench`` command line (:class:`JobCommand`). When it starts it looks at its run
folder: if a previous attempt left anything there (a crash, a kill, a preemption), the command's own
``--resume`` is passed, so the fine-tune grid, the SGD linear probe and detection continue from their
saved state instead of refusing the folder. Commands without ``--resume`` (kNN, L-BFGS; the SGD probe
resumes from its state file by itself) run as they are.

Several processes per task (DESIGN.md section 8, a task's ``gpus: N`` and ``nodes: M``):

* locally, ``python -m torch.distributed.run --standalone --nproc-per-node N -m sslbench ARGV``:
  torchrun's environment, one process per device (gloo on the CPU, as the loops choose);
* detection instead gets ``--num-gpus N`` (and ``--num-machines M``): Detectron2 starts its own
  processes (``detectron2.engine.launch``);
* under submitit, one job of ``nodes=M`` with ``tasks_per_node=N`` (detection: 1 task per node); each
  task sets torch's env:// variables from Slurm with ``submitit.helpers.TorchDistributedEnvironment``
  and runs the command in-process. On preemption or at the time limit submitit signals the job
  (``USR2``), calls :meth:`JobCommand.checkpoint` on rank 0 and requeues the same command, which then
  finds its folder and resumes.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

RESUME_OPTION = "--resume"
# what a training loop returns after a stop signal (SIGTERM / SIGUSR1) made it save its state and stop:
# 128 + SIGTERM, the status schedulers requeue on
EXIT_STOPPED = 143
STDERR_TAIL = 4000


# ---------------------------------------------------------------- the commands' own options


@functools.lru_cache(maxsize=1)
def _subparsers() -> dict[str, Any]:
    from sslbench.cli import build_parser

    parser = build_parser()
    return dict(next(a for a in parser._actions if a.dest == "command").choices)


def available_commands() -> set[str]:
    return set(_subparsers())


def command_accepts(command: str, option: str) -> bool:
    """Whether ``sslbench COMMAND`` has the long option ``option`` (e.g. ``--resume``)."""
    parser = _subparsers().get(command)
    return parser is not None and option in parser._option_string_actions


# ---------------------------------------------------------------- running one command


@dataclass
class CommandOutcome:
    """What became of ``sslbench ARGV``: its exit status and, when it failed, why."""

    returncode: int
    error: str | None = None
    stderr_tail: str = ""
    traceback: str | None = None
    seconds: float = 0.0
    system_exit: bool = False  # the command raised SystemExit (argparse, or a signal handler's exit)


class _Tee(io.TextIOBase):
    """Forwards writes to ``stream`` and keeps their last ``limit`` characters."""

    def __init__(self, stream: Any, limit: int = STDERR_TAIL) -> None:
        self.stream, self.limit, self.tail = stream, limit, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.tail = (self.tail + text)[-self.limit :]
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def fileno(self) -> int:
        return self.stream.fileno()


def _error_line(tail: str) -> str | None:
    lines = [line.strip() for line in tail.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    return (errors or lines or [None])[-1]


def run_command(argv: Sequence[str]) -> CommandOutcome:
    """Run ``sslbench ARGV`` in this process (a module-level function: submitit pickles it)."""
    from sslbench.cli import main

    argv = [str(a) for a in argv]
    if not argv or argv[0] not in available_commands():
        command = argv[0] if argv else ""
        return CommandOutcome(
            2, f"unknown command {command!r}: this sslbench has no `sslbench {command}` subcommand"
        )
    start = time.perf_counter()
    tee = _Tee(sys.stderr)
    outcome = CommandOutcome(0)
    try:
        with contextlib.redirect_stderr(tee):
            outcome.returncode = main(argv)
    except SystemExit as exc:  # argparse: a bad option; or a signal handler ending the process
        outcome.returncode = exc.code if isinstance(exc.code, int) else 2
        outcome.system_exit = True
    except Exception as exc:
        outcome.returncode = 1
        outcome.error = f"{type(exc).__name__}: {exc}"
        outcome.traceback = traceback.format_exc()
    outcome.seconds = time.perf_counter() - start
    outcome.stderr_tail = tee.tail
    if outcome.returncode != 0 and outcome.error is None:
        outcome.error = _error_line(tee.tail) or f"exit status {outcome.returncode}"
    return outcome


def torchrun_argv(argv: Sequence[str], processes: int) -> list[str]:
    """``sslbench ARGV`` as ``processes`` torchrun workers on this machine."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(processes),
        "-m",
        "sslbench",
        *argv,
    ]


def run_torchrun(argv: Sequence[str], processes: int) -> CommandOutcome:
    """Run ``sslbench ARGV`` as ``processes`` processes under torchrun; their stderr is forwarded to
    ours as it comes (the tail is kept for a failure record)."""
    start = time.perf_counter()
    tee = _Tee(sys.stderr)
    process = subprocess.Popen(torchrun_argv(argv, processes), stderr=subprocess.PIPE)
    assert process.stderr is not None

    def forward() -> None:
        for chunk in iter(lambda: os.read(process.stderr.fileno(), 4096), b""):  # type: ignore[union-attr]
            tee.write(chunk.decode("utf-8", errors="replace"))
            tee.flush()

    reader = threading.Thread(target=forward, daemon=True)
    reader.start()
    try:
        returncode = process.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches the workers too; wait for them to go
        process.wait()
        raise
    finally:
        reader.join(timeout=5)
        process.stderr.close()
    outcome = CommandOutcome(returncode, seconds=time.perf_counter() - start, stderr_tail=tee.tail)
    if returncode != 0:
        outcome.error = _error_line(tee.tail) or f"torchrun exit status {returncode}"
    return outcome


# ---------------------------------------------------------------- one job


@dataclass
class JobCommand:
    """One suite job's command: ``head`` (the subcommand, checkpoint, dataset, folders),
    ``--resume`` when due, then ``tail`` (the task's options and trailing arguments).

    Calling it runs the command inside a submitit job (every task of it); :meth:`run_local` runs it
    on this machine. ``out`` is the folder whose existence means "a previous attempt started here"."""

    head: tuple[str, ...]
    tail: tuple[str, ...]
    out: Path
    gpus: int = 1  # processes (devices) per node
    nodes: int = 1
    _requeued: bool = field(default=False, init=False, repr=False, compare=False)

    @property
    def command(self) -> str:
        return self.head[0]

    @property
    def detection(self) -> bool:
        return self.command == "detect"

    def argv(self, resume: bool = False, middle: Sequence[str] = ()) -> list[str]:
        return [*self.head, *([RESUME_OPTION] if resume else []), *middle, *self.tail]

    def continues(self) -> bool:
        """True when an earlier attempt left the run folder: this one continues it."""
        return self.out.exists()

    def resumes(self) -> bool:
        """True when the command is to be given ``--resume`` (it continues, and has the option)."""
        return self.continues() and command_accepts(self.command, RESUME_OPTION)

    def run_local(self) -> CommandOutcome:
        """On this machine: in this process, or as ``gpus`` torchrun workers (detection launches its
        own ``--num-gpus`` processes)."""
        argv = self.argv(self.resumes())
        if self.nodes > 1:
            raise ValueError("a local run has one machine; several nodes need --launcher submitit")
        if self.gpus > 1 and not self.detection:
            return run_torchrun(argv, self.gpus)
        return run_command(argv)

    def __call__(self) -> CommandOutcome:
        """Inside a submitit job: one of its ``nodes x tasks_per_node`` tasks."""
        from submitit.helpers import TorchDistributedEnvironment

        self._requeued = False
        middle: list[str] = []
        if self.detection and self.nodes > 1:  # one task per node; Detectron2 spawns the GPU workers
            env = TorchDistributedEnvironment()
            middle = [
                "--machine-rank",
                str(env.rank),
                "--dist-url",
                f"tcp://{env.master_addr}:{env.master_port}",
            ]
        elif not self.detection and self.gpus * self.nodes > 1:
            # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from Slurm's variables; every task keeps
            # all GPUs of its node visible and picks cuda:LOCAL_RANK, as under torchrun
            TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        resume = self.resumes()
        if self.continues():
            print(f"sslbench suite: continuing the earlier attempt in {self.out}", flush=True)
        with _save_before_requeue() as preempted:
            outcome = run_command(self.argv(resume, middle))
        if preempted and outcome.returncode != 0:  # the loop saved and stopped: now submitit requeues
            submitit_handler, signum, frame = preempted
            submitit_handler(signum, frame)
        if self._requeued and outcome.system_exit:
            raise SystemExit(outcome.returncode)  # submitit's requeue exit: let it end the process
        return outcome

    def checkpoint(self) -> Any:
        """submitit calls this on preemption or at the time limit (rank 0), then requeues the job
        with what it returns: this same command, which resumes from the run folder."""
        from submitit.helpers import DelayedSubmission

        self._requeued = True
        return DelayedSubmission(self)

    def resources(self) -> dict[str, int]:
        """submitit parameters for this job's shape."""
        return {
            "nodes": self.nodes,
            "tasks_per_node": 1 if self.detection else self.gpus,
            "gpus_per_node": self.gpus,
        }


@contextlib.contextmanager
def _save_before_requeue() -> Iterator[list[Any]]:
    """Within a submitit job: when submitit's preemption signal (USR2) comes while a training loop
    catches the stop signals (SIGUSR1: save at the next step, then stop), pass it to the loop first;
    the yielded list then holds ``(submitit's handler, signum, frame)`` for the caller to call once
    the command has returned. Without such a loop, submitit's handler runs at once (the command
    resumes from its last periodic save)."""
    from submitit import JobEnvironment

    preemption = getattr(signal, "SIG" + JobEnvironment.USR_SIG)
    submitit_handler = signal.getsignal(preemption)
    preempted: list[Any] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        loop = signal.getsignal(signal.SIGUSR1)
        if callable(loop) and loop is not handler and not preempted:
            preempted.extend([submitit_handler, signum, frame])
            loop(signal.SIGUSR1, frame)
        elif callable(submitit_handler):
            submitit_handler(signum, frame)

    if not callable(submitit_handler):  # not inside a submitit job that handles preemption
        yield preempted
        return
    signal.signal(preemption, handler)
    try:
        yield preempted
    finally:
        signal.signal(preemption, submitit_handler)


def combine_outcomes(outcomes: Sequence[CommandOutcome]) -> CommandOutcome:
    """One outcome for a job's tasks: rank 0's, unless it succeeded and another rank did not."""
    failed = [o for o in outcomes if o.returncode != 0]
    if outcomes and outcomes[0].returncode != 0:
        return outcomes[0]
    return failed[0] if failed else outcomes[0]
