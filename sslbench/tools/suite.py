"""The end-to-end suite: every task of a YAML file on every checkpoint, then the leaderboard.

A task is one sslbench subcommand (``knn``, ``linear``, ``finetune``, ``detect``) with its dataset,
root and options; the suite builds that subcommand's argv and runs it through ``sslbench.cli.main``,
in this process (``--launcher local``) or as one submitit job per task (``--launcher submitit``):
the command line is the job interface, so a suite task and a hand-typed command are the same run.

Where a run goes, and when it counts as done (DESIGN.md section 8: each job leaves its record, nothing
needs a shared server)::

    OUT/<sha256[:12] of the checkpoint file>/<task name>-<spec hash>/seed<N>/result.json

The spec hash (8 hex digits) covers everything that defines the task: subcommand, dataset, root,
options, trailing arguments (and, for detection, the number of seeds); not the checkpoint's path, the
output folder or the seed, which the folder names already hold. A job is done, and skipped, when every
record it should leave (``seed<N>/result.json``; for detection ``seed0 .. seed<S-1>``) reads back as a
valid record with status ``ok`` and the checkpoint's sha256. A changed option therefore gives a new
folder and a new run; a re-run after a crash does only what is missing. A job that fails leaves a
record with status ``failed``, its error, argv and the end of its stderr (unless the command wrote its
own failed record), and the suite goes on with the next.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from sslbench.atomic import write_json
from sslbench.config import load_config, resolve_config_path
from sslbench.errors import ConfigError, RecordError
from sslbench.tools.leaderboard import LABELS_NAME, Leaderboard, build_leaderboard, write_leaderboard
from sslbench.tools.records import RECORD_NAME, ResultRecord, read_record, utc_now, write_record

# suite task kind -> the sslbench subcommand that runs it
TASK_COMMANDS = {"knn": "knn", "linear": "linear", "finetune": "finetune", "detection": "detect"}
# commands that read features through the shared cache (--cache-dir OUT/.feature_cache)
_CACHED = ("knn", "linear")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_STDERR_TAIL = 4000


@dataclass
class TaskConfig:
    """One task of a suite; ``options`` are the subcommand's long options without ``--``."""

    name: str = MISSING  # folder name and leaderboard provenance; unique in the suite
    task: str = MISSING  # knn | linear | finetune | detection
    dataset: str = MISSING  # --dataset (a registry name); detection: --task (voc, coco-1x, coco-2x)
    root: str | None = None  # --root; detection reads $DETECTRON2_DATASETS instead
    seeds: int = 1  # seeds 0 .. N-1 (detection: detect --seeds N, one job)
    options: dict[str, Any] = field(default_factory=dict)  # {"protocol": "lbfgs", "image-size": 32}
    args: list[str] = field(default_factory=list)  # trailing arguments (detect: KEY VALUE overrides)
    slurm: dict[str, Any] = field(default_factory=dict)  # submitit parameters for this task's jobs


@dataclass
class SuiteConfig:
    name: str = "suite"
    data_root: str = "datasets"  # for ${data_root}/... in the tasks' roots
    slurm: dict[str, Any] = field(default_factory=dict)  # submitit AutoExecutor parameters, every job
    tasks: list[TaskConfig] = field(default_factory=list)


def load_suite(path: str | Path, overrides: Sequence[str] = ()) -> SuiteConfig:
    """A shipped suite by name (``paper``, ``quick``) or a YAML path, with ``key=value`` overrides."""
    source = resolve_config_path(path, "suites")
    return validate_suite(load_config(SuiteConfig, source, overrides), str(source))


def validate_suite(suite: SuiteConfig, where: str = "suite") -> SuiteConfig:
    if not suite.tasks:
        raise ConfigError(f"{where}: no tasks")
    seen = set()
    for i, task in enumerate(suite.tasks):
        at = f"{where}: tasks[{i}] ({task.name})"
        if not _NAME.match(task.name):
            raise ConfigError(f"{at}: name must be letters, digits, '.', '_' or '-' (it names a folder)")
        if task.name in seen:
            raise ConfigError(f"{at}: the name {task.name!r} is used twice")
        seen.add(task.name)
        if task.task not in TASK_COMMANDS:
            raise ConfigError(f"{at}: task {task.task!r} is not one of {', '.join(TASK_COMMANDS)}")
        if task.seeds < 1:
            raise ConfigError(f"{at}: seeds is a number of runs (seeds 0 .. N-1), at least 1")
        if task.task == "detection" and task.root is not None:
            raise ConfigError(f"{at}: detection reads $DETECTRON2_DATASETS; remove root")
        reserved = {"out", "seed", "seeds", "dataset", "root", "task", "resume"} & {
            k.replace("_", "-") for k in task.options
        }
        if reserved:
            raise ConfigError(f"{at}: options {', '.join(sorted(reserved))} are set by the suite itself")
    return suite


def option_argv(options: Mapping[str, Any]) -> list[str]:
    """Long options: ``{"image-size": 32, "no-cache": True, "knn": ["20:0.07"]}`` gives
    ``--image-size 32 --no-cache --knn 20:0.07`` (False and None leave the option out)."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def spec_hash(task: TaskConfig) -> str:
    """8 hex digits identifying what ``task`` runs (not where, on which checkpoint, or with which seed)."""
    spec = {
        "command": TASK_COMMANDS[task.task],
        "dataset": task.dataset,
        "root": str(Path(task.root).expanduser().resolve()) if task.root else None,
        "options": {k.replace("_", "-"): v for k, v in sorted(task.options.items())},
        "args": [str(a) for a in task.args],
        "seeds": task.seeds if task.task == "detection" else None,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Job:
    """One command to run: a task on a checkpoint (with one seed, or all seeds for detection)."""

    task: TaskConfig
    checkpoint: Path
    sha256: str
    seed: int | None
    out: Path  # the command's --out
    argv: tuple[str, ...]
    records: tuple[Path, ...]  # the records it leaves when it succeeds

    @property
    def title(self) -> str:
        seed = "" if self.seed is None else f" seed {self.seed}"
        return f"{self.task.name}{seed} on {self.checkpoint.name} ({self.sha256[:12]})"


def plan_jobs(suite: SuiteConfig, checkpoints: Sequence[tuple[Path, str]], out: Path) -> list[Job]:
    """Every (checkpoint, task, seed) job of ``suite``, with its argv and the records it will leave."""
    jobs = []
    for checkpoint, sha in checkpoints:
        for task in suite.tasks:
            folder = out / sha[:12] / f"{task.name}-{spec_hash(task)}"
            command = TASK_COMMANDS[task.task]
            extra = option_argv(task.options) + [str(a) for a in task.args]
            if task.task == "detection":
                argv = [command, str(checkpoint), "--task", task.dataset, "--out", str(folder)]
                argv += ["--seeds", str(task.seeds), "--resume", *extra]
                records = tuple(folder / f"seed{s}" / RECORD_NAME for s in range(task.seeds))
                jobs.append(Job(task, checkpoint, sha, None, folder, tuple(argv), records))
                continue
            for seed in range(task.seeds):
                run = folder / f"seed{seed}"
                argv = [command, str(checkpoint), "--dataset", task.dataset]
                argv += ["--root", task.root] if task.root else []
                argv += ["--out", str(run), "--seed", str(seed)]
                names = {k.replace("_", "-") for k in task.options}
                if command in _CACHED and not {"cache-dir", "no-cache"} & names:
                    argv += ["--cache-dir", str(out / ".feature_cache")]
                jobs.append(Job(task, checkpoint, sha, seed, run, (*argv, *extra), (run / RECORD_NAME,)))
    return jobs


def _record_state(path: Path, sha256: str) -> str:
    """``ok`` (a valid successful record of this checkpoint), ``failed``, ``other`` or ``missing``."""
    if not path.is_file():
        return "missing"
    try:
        record = read_record(path)
    except RecordError:
        return "other"
    if record.checkpoint.get("sha256") != sha256:
        return "other"
    return record.status


def is_done(job: Job) -> bool:
    return all(_record_state(path, job.sha256) == "ok" for path in job.records)


# ---------------------------------------------------------------- running one command


@dataclass
class CommandOutcome:
    """What became of ``sslbench ARGV``: its exit status and, when it failed, why."""

    returncode: int
    error: str | None = None
    stderr_tail: str = ""
    traceback: str | None = None
    seconds: float = 0.0


class _Tee(io.TextIOBase):
    """Forwards writes to ``stream`` and keeps their last ``limit`` characters."""

    def __init__(self, stream: Any, limit: int = _STDERR_TAIL) -> None:
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


def available_commands() -> set[str]:
    from sslbench.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return set(subparsers.choices)


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
    except SystemExit as exc:  # argparse: a bad option
        outcome.returncode = exc.code if isinstance(exc.code, int) else 2
    except Exception as exc:
        outcome.returncode = 1
        outcome.error = f"{type(exc).__name__}: {exc}"
        outcome.traceback = traceback.format_exc()
    outcome.seconds = time.perf_counter() - start
    outcome.stderr_tail = tee.tail
    if outcome.returncode != 0 and outcome.error is None:
        outcome.error = _error_line(tee.tail) or f"exit status {outcome.returncode}"
    return outcome


def record_failure(job: Job, outcome: CommandOutcome, started_at: str, started: float) -> Path:
    """Leave a ``failed`` record for ``job`` where its first missing record belongs, unless the command
    wrote its own failed record during this attempt."""
    for path in job.records:
        if _record_state(path, job.sha256) == "failed" and path.stat().st_mtime >= started:
            return path
    target = next((p for p in job.records if _record_state(p, job.sha256) != "ok"), job.records[0])
    record = ResultRecord(
        task=job.task.task,
        protocol={
            "name": job.task.task,
            "source": "sslbench suite (the command failed before writing its own record)",
            "settings": {"options": dict(job.task.options), "args": list(job.task.args)},
        },
        dataset={"name": job.task.dataset, "root": job.task.root},
        metrics={},
        checkpoint={"path": str(job.checkpoint), "sha256": job.sha256, "format": None, "key": None},
        seed=job.seed or 0,
        started_at=started_at,
        status="failed",
        error=outcome.error or f"exit status {outcome.returncode}",
        extra={
            "suite_task": job.task.name,
            "argv": list(job.argv),
            "exit_code": outcome.returncode,
            "stderr_tail": outcome.stderr_tail,
            "traceback": outcome.traceback,
        },
    )
    return write_record(target.parent, record)


# ---------------------------------------------------------------- the suite


@dataclass
class SuiteReport:
    ran: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    failed: list[tuple[Job, str, Path]] = field(default_factory=list)  # job, error, failure record
    board: Leaderboard | None = None
    leaderboard: dict[str, Path] = field(default_factory=dict)  # md, csv, html

    def summary(self) -> str:
        lines = [f"suite: {len(self.ran)} ran, {len(self.skipped)} already done, {len(self.failed)} failed"]
        lines += [f"  failed: {job.title}: {error} ({path})" for job, error, path in self.failed]
        return "\n".join(lines)


def _checkpoint_hashes(checkpoints: Sequence[Path]) -> list[tuple[Path, str]]:
    from sslbench.checkpoints import zoo
    from sslbench.checkpoints.loading import sha256_of

    # zoo:NAME is fetched (once) and hashed here; its jobs keep the name (and the table's settings).
    files = [zoo.resolve(str(c))[0] if zoo.is_zoo_name(c) else Path(c) for c in checkpoints]
    missing = [str(c) for c in files if not c.is_file()]
    if missing:
        raise ConfigError(f"no such checkpoint file: {', '.join(missing)}")
    return [
        (Path(str(c)) if zoo.is_zoo_name(c) else f.resolve(), sha256_of(f))
        for c, f in zip(checkpoints, files, strict=True)
    ]


def _write_labels(out: Path, hashes: Sequence[tuple[Path, str]], labels: Sequence[str] | None) -> None:
    if labels is None:
        return
    if len(labels) != len(hashes):
        raise ConfigError(f"--labels: {len(labels)} labels for {len(hashes)} checkpoints")
    path = out / LABELS_NAME
    known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    known.update({sha: label for (_, sha), label in zip(hashes, labels, strict=True)})
    write_json(path, known)


def run_suite(
    suite: SuiteConfig,
    checkpoints: Sequence[str | Path],
    out: str | Path,
    labels: Sequence[str] | None = None,
    launcher: str = "local",
    cluster: str | None = None,
    leaderboard_dir: str | Path | None = None,
) -> SuiteReport:
    """Run every job of ``suite`` not done yet, record failures, then write the leaderboard of ``out``
    into ``leaderboard_dir`` (default ``out``)."""
    out = Path(out).resolve()
    hashes = _checkpoint_hashes([Path(c) for c in checkpoints])
    _write_labels(out, hashes, labels)
    report = SuiteReport()
    todo = []
    for job in plan_jobs(suite, hashes, out):
        if is_done(job):
            print(f"suite: done already, skipped: {job.title}")
            report.skipped.append(job)
        else:
            todo.append(job)
    if launcher == "local":
        _run_local(todo, report)
    elif launcher == "submitit":
        _run_submitit(todo, suite, out, cluster, report)
    else:
        raise ConfigError(f"--launcher {launcher!r}: expected local or submitit")
    report.board = build_leaderboard(out)
    report.leaderboard = write_leaderboard(report.board, leaderboard_dir or out)
    return report


def _finish(job: Job, outcome: CommandOutcome, started_at: str, started: float, report: SuiteReport) -> None:
    if outcome.returncode == 0 and is_done(job):
        report.ran.append(job)
        return
    if outcome.returncode == 0:
        outcome.error = "the command succeeded but did not leave " + ", ".join(map(str, job.records))
    path = record_failure(job, outcome, started_at, started)
    print(f"suite: FAILED {job.title}: {outcome.error} (recorded in {path})", file=sys.stderr)
    report.failed.append((job, outcome.error or "", path))


def _run_local(jobs: Sequence[Job], report: SuiteReport) -> None:
    for i, job in enumerate(jobs, 1):
        print(f"suite [{i}/{len(jobs)}]: {job.title}\n  sslbench {' '.join(job.argv)}")
        started_at, started = utc_now(), time.time()
        outcome = run_command(job.argv)
        if outcome.returncode == 130:  # Ctrl-C in the command: stop the suite, record nothing
            raise KeyboardInterrupt
        _finish(job, outcome, started_at, started, report)


def _run_submitit(
    jobs: Sequence[Job], suite: SuiteConfig, out: Path, cluster: str | None, report: SuiteReport
) -> None:
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher submitit needs submitit: pip install 'sslbench[cluster]'") from None
    submitted = []
    for job in jobs:
        executor = submitit.AutoExecutor(folder=out / "submitit" / "%j", cluster=cluster)
        executor.update_parameters(name=f"sslbench-{job.task.name}", **{**suite.slurm, **job.task.slurm})
        started_at, started = utc_now(), time.time()
        handle = executor.submit(run_command, list(job.argv))
        print(f"suite: submitted {job.title} as job {handle.job_id}")
        submitted.append((job, handle, started_at, started))
    for job, handle, started_at, started in submitted:
        try:
            outcome = handle.result()
        except Exception as exc:  # the job itself died (time limit, node failure, pickling)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            outcome = CommandOutcome(
                1, f"submitit job {handle.job_id} failed: {first}", str(exc)[-_STDERR_TAIL:]
            )
        _finish(job, outcome, started_at, started, report)
