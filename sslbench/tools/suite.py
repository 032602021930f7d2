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

A rerun continues what an earlier one left unfinished: a job whose folder exists starts with its
command's ``--resume`` (fine-tuning's grid, detection; the SGD linear probe resumes from its state file
by itself), and a ``failed`` record is first moved aside to ``failed-<N>.json``, so the command finds
no record to refuse and the failure stays readable (:mod:`sslbench.tools.suite_launch`).

A task may ask for ``gpus: N`` processes on each of ``nodes: M`` machines: locally through torchrun,
under submitit as one job of N tasks per node that requeues itself (:mod:`sslbench.tools.suite_launch`).
A task of ``family: resnet`` or ``vit`` runs only on checkpoints that read as that family (MoCo's
SGD probe and detection are ResNet protocols); on the others it is skipped with a line and no record.

The number of processes is part of the task's settings (fine-tuning's batch-norm statistics are per
process), so it enters the spec hash when it is not 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
import time
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
from sslbench.tools.suite_launch import (
    EXIT_STOPPED,
    STDERR_TAIL,
    CommandOutcome,
    JobCommand,
    combine_outcomes,
)

# suite task kind -> the sslbench subcommand that runs it
TASK_COMMANDS = {"knn": "knn", "linear": "linear", "finetune": "finetune", "detection": "detect"}
# commands that read features through the shared cache (--cache-dir OUT/.feature_cache)
_CACHED = ("knn", "linear")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# options the suite sets itself, from the task's fields
FAMILIES = ("any", "resnet", "vit")  # a task's ``family``: the checkpoints it applies to
_RESERVED = {"out", "seed", "seeds", "dataset", "root", "task", "resume"}
_RESERVED_DETECTION = {"num-gpus", "num-machines", "machine-rank", "dist-url"}  # from gpus / nodes
_RESOURCES = {"nodes", "tasks_per_node", "gpus_per_node"}  # submitit parameters from gpus / nodes


class SuiteStopped(Exception):
    """A stop signal (SIGTERM at a time limit, SIGUSR1) ended a job after it saved its state: the
    suite stops too, and running it again continues that job."""


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
    gpus: int = 1  # processes per node, one per device (torchrun; detection: --num-gpus)
    nodes: int = 1  # machines (submitit only; detection: --num-machines)
    slurm: dict[str, Any] = field(default_factory=dict)  # submitit parameters for this task's jobs
    family: str = "any"  # resnet | vit: run only on checkpoints of that family (MoCo's SGD probe, detection)


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
        if task.family not in FAMILIES:
            raise ConfigError(f"{at}: family {task.family!r} is not one of {', '.join(FAMILIES)}")
        if task.gpus < 1 or task.nodes < 1:
            raise ConfigError(f"{at}: gpus and nodes count processes per node and machines, at least 1")
        names = {k.replace("_", "-") for k in task.options}
        reserved = _RESERVED & names
        if reserved:
            raise ConfigError(f"{at}: options {', '.join(sorted(reserved))} are set by the suite itself")
        if task.task == "detection" and _RESERVED_DETECTION & names:
            taken = ", ".join(sorted(_RESERVED_DETECTION & names))
            raise ConfigError(f"{at}: options {taken} come from the task's gpus and nodes; use those")
        if _RESOURCES & set(task.slurm):
            taken = ", ".join(sorted(_RESOURCES & set(task.slurm)))
            raise ConfigError(f"{at}: slurm {taken}: set the task's gpus and nodes instead")
    if _RESOURCES & set(suite.slurm):
        taken = ", ".join(sorted(_RESOURCES & set(suite.slurm)))
        raise ConfigError(f"{where}: slurm {taken}: set each task's gpus and nodes instead")
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
    if (task.gpus, task.nodes) != (1, 1):  # left out at 1 x 1: earlier suites keep their folders
        spec["processes"] = {"gpus": task.gpus, "nodes": task.nodes}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Job:
    """One command to run: a task on a checkpoint (with one seed, or all seeds for detection)."""

    task: TaskConfig
    checkpoint: Path
    sha256: str
    seed: int | None
    out: Path  # the command's --out
    command: JobCommand  # the command line; ``--resume`` is added when it starts, if due
    records: tuple[Path, ...]  # the records it leaves when it succeeds

    @property
    def argv(self) -> tuple[str, ...]:
        """The command line of a first attempt."""
        return tuple(self.command.argv())

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
            tail = (*option_argv(task.options), *(str(a) for a in task.args))
            shape = {"gpus": task.gpus, "nodes": task.nodes}
            if task.task == "detection":
                head = [command, str(checkpoint), "--task", task.dataset, "--out", str(folder)]
                head += ["--seeds", str(task.seeds), "--num-gpus", str(task.gpus)]
                head += ["--num-machines", str(task.nodes)] if task.nodes > 1 else []
                records = tuple(folder / f"seed{s}" / RECORD_NAME for s in range(task.seeds))
                run = JobCommand(tuple(head), tail, folder, **shape)
                jobs.append(Job(task, checkpoint, sha, None, folder, run, records))
                continue
            for seed in range(task.seeds):
                folder_seed = folder / f"seed{seed}"
                head = [command, str(checkpoint), "--dataset", task.dataset]
                head += ["--root", task.root] if task.root else []
                head += ["--out", str(folder_seed), "--seed", str(seed)]
                names = {k.replace("_", "-") for k in task.options}
                if command in _CACHED and not {"cache-dir", "no-cache"} & names:
                    head += ["--cache-dir", str(out / ".feature_cache")]
                run = JobCommand(tuple(head), tail, folder_seed, **shape)
                jobs.append(Job(task, checkpoint, sha, seed, folder_seed, run, (folder_seed / RECORD_NAME,)))
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
    not_applicable: list[Job] = field(default_factory=list)  # the task's family is not the checkpoint's
    board: Leaderboard | None = None
    leaderboard: dict[str, Path] = field(default_factory=dict)  # md, csv, html

    def summary(self) -> str:
        lines = [f"suite: {len(self.ran)} ran, {len(self.skipped)} already done, {len(self.failed)} failed"]
        if self.not_applicable:
            lines[0] += f", {len(self.not_applicable)} not applicable to their checkpoint"
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


def checkpoint_family(checkpoint: Path) -> str | None:
    """``resnet`` or ``vit`` as the checkpoint reads with the commands' defaults; None when it does not
    read so (a task may pass ``format``/``key``/``arch``): then every task runs and its command decides."""
    from sslbench.checkpoints import zoo
    from sslbench.checkpoints.readers import read_checkpoint
    from sslbench.errors import SslbenchError
    from sslbench.models.vit_archs import is_vit_arch

    path = zoo.resolve(str(checkpoint))[0] if zoo.is_zoo_name(checkpoint) else checkpoint
    try:
        arch = read_checkpoint(path).arch
    except SslbenchError:
        return None
    return "vit" if is_vit_arch(arch) else "resnet"


def _not_for(job: Job, families: Mapping[str, str | None]) -> str | None:
    """Why ``job``'s task does not apply to its checkpoint (its ``family`` is not the checkpoint's)."""
    family = families.get(job.sha256)
    if job.task.family == "any" or family in (None, job.task.family):
        return None
    return f"{job.task.name} is for {job.task.family} checkpoints and {job.checkpoint.name} is a {family}"


def _write_labels(out: Path, hashes: Sequence[tuple[Path, str]], labels: Sequence[str] | None) -> None:
    if labels is None:
        return
    if len(labels) != len(hashes):
        raise ConfigError(f"--labels: {len(labels)} labels for {len(hashes)} checkpoints")
    path = out / LABELS_NAME
    try:
        known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path}: not a readable labels file ({exc}); fix or remove it") from None
    if not isinstance(known, dict):
        raise ConfigError(f"{path}: expected a JSON object mapping checkpoint sha256 to a label")
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
    if launcher not in ("local", "submitit"):
        raise ConfigError(f"--launcher {launcher!r}: expected local or submitit")
    if launcher == "local":
        several = [t.name for t in suite.tasks if t.nodes > 1]
        if several:
            raise ConfigError(
                f"tasks {', '.join(several)} ask for several nodes: a local suite runs on one machine "
                "(use --launcher submitit)"
            )
    out = Path(out).resolve()
    hashes = _checkpoint_hashes([Path(c) for c in checkpoints])
    _write_labels(out, hashes, labels)
    report = SuiteReport()
    todo = []
    by_family = any(task.family != "any" for task in suite.tasks)
    families = {sha: checkpoint_family(path) for path, sha in hashes} if by_family else {}
    for job in plan_jobs(suite, hashes, out):
        if (reason := _not_for(job, families)) is not None:
            print(f"suite: not applicable, skipped: {reason}")
            report.not_applicable.append(job)
            continue
        if is_done(job):
            print(f"suite: done already, skipped: {job.title}")
            report.skipped.append(job)
            continue
        for moved in set_failures_aside(job):
            print(f"suite: an earlier failure of {job.title} is kept as {moved}")
        todo.append(job)
    progress = SuiteProgress(total=len(report.skipped) + len(todo), done_before=len(report.skipped))
    if launcher == "local":
        _run_local(todo, report, progress)
    else:
        _run_submitit(todo, suite, out, cluster, report, progress)
    report.board = build_leaderboard(out)
    report.leaderboard = write_leaderboard(report.board, leaderboard_dir or out)
    return report


def set_failures_aside(job: Job) -> list[Path]:
    """Move the job's ``failed`` (or unreadable) records to ``failed-<N>.json`` beside them before it
    runs again: the command then finds no record to refuse, and the earlier error stays readable."""
    moved = []
    for path in job.records:
        if _record_state(path, job.sha256) in ("missing", "ok"):
            continue
        n = 1
        while (path.parent / f"failed-{n}.json").exists():
            n += 1
        moved.append(path.replace(path.parent / f"failed-{n}.json"))
    return moved


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class SuiteProgress:
    """Counts and times of the whole suite, printed as plain lines (a Slurm log has no terminal)."""

    total: int  # jobs of the suite
    done_before: int  # skipped: finished by an earlier run
    started: float = field(default_factory=time.monotonic)
    durations: list[float] = field(default_factory=list)  # jobs finished by this run

    def finished(self, seconds: float) -> None:
        self.durations.append(seconds)

    def line(self, running: int = 0, side_by_side: bool = False) -> str:
        """``side_by_side``: the remaining jobs were all submitted when the suite started (submitit),
        so each is expected to end one mean duration after that, not one after another."""
        done = self.done_before + len(self.durations)
        remaining = self.total - done
        elapsed = time.monotonic() - self.started
        text = f"suite progress: {done}/{self.total} jobs done ({self.done_before} before this run)"
        text += f", {running} running" if running else ""
        text += f", {remaining} to go; elapsed {_clock(elapsed)}"
        if remaining and self.durations:
            mean = sum(self.durations) / len(self.durations)
            if side_by_side:
                eta = max(mean - elapsed, 0.0)
                text += f"; ETA {_clock(eta)} (side by side; {_clock(mean)} per job from submission)"
            else:
                text += f"; ETA {_clock(mean * remaining)} ({_clock(mean)} per job so far)"
        elif remaining:
            text += "; ETA after the first job"
        return text


def _finish(job: Job, outcome: CommandOutcome, started_at: str, started: float, report: SuiteReport) -> None:
    if outcome.returncode == 0 and is_done(job):
        report.ran.append(job)
        return
    if outcome.returncode == 0:
        outcome.error = "the command succeeded but did not leave " + ", ".join(map(str, job.records))
    path = record_failure(job, outcome, started_at, started)
    print(f"suite: FAILED {job.title}: {outcome.error} (recorded in {path})", file=sys.stderr)
    report.failed.append((job, outcome.error or "", path))


def _shown(job: Job) -> str:
    argv = job.command.argv(job.command.resumes())
    if job.task.gpus > 1 and job.task.task != "detection":
        return f"torchrun --standalone --nproc-per-node {job.task.gpus} -m sslbench {' '.join(argv)}"
    return "sslbench " + " ".join(argv)


def _run_local(jobs: Sequence[Job], report: SuiteReport, progress: SuiteProgress) -> None:
    for i, job in enumerate(jobs, 1):
        print(progress.line(), flush=True)
        resume = " (continuing an earlier attempt)" if job.command.continues() else ""
        print(f"suite [{i}/{len(jobs)}]: {job.title}{resume}\n  {_shown(job)}", flush=True)
        started_at, started = utc_now(), time.time()
        outcome = job.command.run_local()
        if outcome.returncode == 130:  # Ctrl-C in the command: stop the suite, record nothing
            raise KeyboardInterrupt
        if outcome.returncode == EXIT_STOPPED:  # SIGTERM / SIGUSR1: the job saved its state
            raise SuiteStopped(f"a stop signal ended {job.title} after it saved its state")
        _finish(job, outcome, started_at, started, report)
        progress.finished(time.time() - started)
    print(progress.line(), flush=True)


def _job_outcome(handle: Any) -> CommandOutcome:
    """Rank 0's outcome (or a failing rank's) of a finished submitit job."""
    try:
        return combine_outcomes(handle.results())
    except Exception as exc:  # the job itself died (time limit, node failure, pickling)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return CommandOutcome(1, f"submitit job {handle.job_id} failed: {first}", str(exc)[-STDERR_TAIL:])


def _run_submitit(
    jobs: Sequence[Job],
    suite: SuiteConfig,
    out: Path,
    cluster: str | None,
    report: SuiteReport,
    progress: SuiteProgress,
    poll_seconds: float = 5.0,
    heartbeat_seconds: float = 600.0,
) -> None:
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher submitit needs submitit: pip install 'sslbench[cluster]'") from None
    executors = []
    for job in jobs:  # every job's parameters are checked before the first is submitted
        executor = submitit.AutoExecutor(folder=out / "submitit" / "%j", cluster=cluster)
        try:
            executor.update_parameters(
                name=f"sslbench-{job.task.name}",
                **{**suite.slurm, **job.task.slurm, **job.command.resources()},
            )
        except (ValueError, NameError, AssertionError) as exc:  # submitit's checks of its parameters
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"task {job.task.name}: submitit refused its parameters: {first}") from None
        executors.append(executor)
    pending = []
    for job, executor in zip(jobs, executors, strict=True):
        started_at, started = utc_now(), time.time()
        handle = executor.submit(job.command)
        shape = f"{job.task.nodes} node(s) x {job.command.resources()['tasks_per_node']} task(s)"
        print(f"suite: submitted {job.title} as job {handle.job_id} ({shape})", flush=True)
        pending.append((job, handle, started_at, started))
    print(progress.line(len(pending), side_by_side=True), flush=True)
    last_line = time.monotonic()
    while pending:
        finished = [entry for entry in pending if entry[1].done()]
        for entry in finished:
            job, handle, started_at, started = entry
            pending.remove(entry)
            _finish(job, _job_outcome(handle), started_at, started, report)
            progress.finished(time.time() - started)
            state = "failed" if report.failed and report.failed[-1][0] is job else "ok"
            print(f"suite: job {handle.job_id} ({job.title}) finished: {state}", flush=True)
        if finished or time.monotonic() - last_line >= heartbeat_seconds:
            print(progress.line(len(pending), side_by_side=True), flush=True)
            last_line = time.monotonic()
        if pending:
            time.sleep(poll_seconds)
    with contextlib.suppress(OSError):  # submitit stages each submission (and requeue) in a literal
        (out / "submitit" / "%j").rmdir()  # "%j" folder and leaves it empty: remove it once all ended
