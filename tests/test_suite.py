"""``sslbench suite``: tasks as subcommands, failures recorded, finished tasks skipped, the leaderboard."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from checkpoint_sources import resnet

from sslbench.cli import main
from sslbench.data import fixtures
from sslbench.errors import ConfigError
from sslbench.tools import suite as suite_module
from sslbench.tools import suite_launch
from sslbench.tools.records import read_record
from sslbench.tools.suite import TaskConfig, load_suite, plan_jobs, run_suite, spec_hash
from sslbench.tools.suite_launch import run_command

SMALL = {"image-size": 32, "batch-size": 16, "workers": 0}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A torchvision ResNet-18, a CUB fixture, and a suite file: kNN, L-BFGS linear, and a broken kNN."""
    base = tmp_path_factory.mktemp("suite")
    checkpoint = base / "resnet18.pth"
    torch.save(resnet("resnet18", seed=0).state_dict(), checkpoint)
    data = fixtures.write_cub(base / "data", num_classes=3, per_class=5, size=32).root
    suite = base / "tiny.yaml"
    suite.write_text(
        f"""
name: tiny
tasks:
  - name: cub-knn
    task: knn
    dataset: cub200
    root: {data}
    options: {{image-size: 32, batch-size: 16, workers: 0, knn: ["5:0.07", "10:0.07"], primary: "5:0.07"}}
  - name: cub-linear
    task: linear
    dataset: cub200
    root: {data}
    options: {{protocol: lbfgs, c-grid-size: 3, image-size: 32, batch-size: 16, workers: 0}}
  - name: broken
    task: knn
    dataset: cub200
    root: {base / "no-such-dataset"}
    options: {{image-size: 32, workers: 0}}
"""
    )
    return checkpoint, data, suite


def test_a_failing_task_is_recorded_and_the_other_tasks_still_run(
    setup: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    checkpoint, _, suite_file = setup
    out = tmp_path / "results"
    assert (
        main(["suite", str(checkpoint), "--suite", str(suite_file), "--out", str(out), "--labels", "R18"])
        == 1
    )
    captured = capsys.readouterr()
    assert "suite: 2 ran, 0 already done, 1 failed" in captured.out
    # plain progress lines for the whole suite: done / to go, elapsed, and an ETA once a job has finished
    progress = [line for line in captured.out.splitlines() if line.startswith("suite progress: ")]
    assert len(progress) == 4 and "0/3 jobs done" in progress[0] and "ETA after the first job" in progress[0]
    assert (
        "1/3 jobs done (0 before this run), 2 to go; elapsed 0:00:" in progress[1]
        and "; ETA 0:" in progress[1]
    )
    assert "3/3 jobs done" in progress[3] and "ETA" not in progress[3]

    jobs = {
        job.task.name: job for job in plan_jobs(load_suite(suite_file), [(checkpoint, _sha(checkpoint))], out)
    }
    knn, linear = read_record(jobs["cub-knn"].records[0]), read_record(jobs["cub-linear"].records[0])
    assert (
        knn.status == linear.status == "ok"
        and knn.task == "knn"
        and linear.protocol["name"] == "linear-lbfgs"
    )
    failure = read_record(jobs["broken"].records[0])
    failure_bytes = jobs["broken"].records[0].read_bytes()
    assert failure.status == "failed" and failure.task == "knn"
    assert "no-such-dataset" in failure.error and failure.extra["argv"][0] == "knn"
    assert failure.checkpoint["sha256"] == knn.checkpoint["sha256"]

    board = (out / "leaderboard.md").read_text()
    assert "| R18 |" in board and "cub200 knn top1" in board and "cub200 linear-lbfgs top1" in board
    assert "failed run" in board and "no-such-dataset" in board
    assert (out / "leaderboard.csv").is_file() and (out / "leaderboard.html").is_file()

    # a second run does no work for the recorded tasks: only the failed one is tried again
    calls = []

    def spy(argv):
        calls.append(list(argv))
        return run_command(argv)

    monkeypatch.setattr(suite_launch, "run_command", spy)
    mtimes = {p: p.stat().st_mtime_ns for p in (jobs["cub-knn"].records[0], jobs["cub-linear"].records[0])}
    moved = tmp_path / "elsewhere.pth"  # the same file elsewhere: the same checkpoint
    shutil.copy(checkpoint, moved)
    report = run_suite(load_suite(suite_file), [moved], out)
    assert [c[0] for c in calls] == ["knn"] and "no-such-dataset" in " ".join(calls[0])
    assert len(report.skipped) == 2 and len(report.failed) == 1 and not report.ran
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    # the earlier failure was set aside, not overwritten: the command found no record in its folder
    kept = jobs["broken"].records[0].parent / "failed-1.json"
    assert kept.read_bytes() == failure_bytes
    assert read_record(jobs["broken"].records[0]).status == "failed"


def _sha(path: Path) -> str:
    from sslbench.checkpoints.loading import sha256_of

    return sha256_of(path)


def test_the_run_folder_follows_the_task_settings_not_the_checkpoint_path(tmp_path: Path) -> None:
    task = TaskConfig(name="t", task="linear", dataset="digits", options={"protocol": "lbfgs"})
    other = TaskConfig(name="t", task="linear", dataset="digits", options={"protocol": "sgd"})
    assert spec_hash(task) != spec_hash(other)
    suite = suite_module.SuiteConfig(tasks=[task])
    a = plan_jobs(suite, [(Path("/x/a.pth"), "1" * 64)], tmp_path)[0]
    b = plan_jobs(suite, [(Path("/y/b.pth"), "1" * 64)], tmp_path)[0]
    assert a.out == b.out == tmp_path / ("1" * 12) / f"t-{spec_hash(task)}" / "seed0"
    assert a.argv[:2] == ("linear", "/x/a.pth") and "--protocol" in a.argv


@pytest.mark.parametrize("name", ["paper", "quick"])
def test_every_job_of_a_shipped_suite_is_a_command_line_the_cli_accepts(name: str, tmp_path: Path) -> None:
    """A typo in a shipped suite's options would only show on the cluster, days in: parse them all now."""
    from sslbench.cli import parse_command_line

    suite = load_suite(name, ["data_root=/data"])
    for job in plan_jobs(suite, [(Path("/c.pth"), "2" * 64)], tmp_path):
        args = parse_command_line(list(job.argv))
        assert args.command == job.argv[0], job.argv
    families = {task.name: task.family for task in suite.tasks}
    if name == "paper":  # MoCo's probe and detection for ResNets, DINO's probe for ViTs, the rest for both
        assert families["in1k-linear"] == families["voc-detection"] == families["coco-detection"] == "resnet"
        assert families["in1k-linear-dino"] == "vit" and families["cub-finetune"] == "any"


def test_detection_tasks_run_detect_once_for_all_seeds_on_the_tasks_gpus(tmp_path: Path) -> None:
    suite = load_suite("paper", ["data_root=/data"])
    jobs = plan_jobs(suite, [(Path("/c.pth"), "2" * 64)], tmp_path)
    voc = next(j for j in jobs if j.task.name == "voc-detection")
    assert voc.argv[:4] == ("detect", "/c.pth", "--task", "voc")
    assert voc.argv[voc.argv.index("--seeds") + 1] == "3"
    # MoCo's detection ran on 8 GPUs: Detectron2 launches them itself, one job task per node
    assert voc.argv[voc.argv.index("--num-gpus") + 1] == "8" and "--num-machines" not in voc.argv
    assert voc.command.resources() == {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 8}
    assert "--resume" not in voc.argv  # a first attempt; a rerun adds it (see the resume tests)
    assert [p.parent.name for p in voc.records] == ["seed0", "seed1", "seed2"]
    linear = next(j for j in jobs if j.task.name == "in1k-linear")
    assert linear.command.resources() == {"nodes": 1, "tasks_per_node": 8, "gpus_per_node": 8}
    cub = next(j for j in jobs if j.task.name == "cub-finetune")
    assert (
        cub.argv[:5] == ("finetune", "/c.pth", "--dataset", "cub200", "--root")
        and "/data/CUB_200_2011" in cub.argv
    )


def test_an_unknown_command_fails_with_a_clear_message() -> None:
    outcome = run_command(["no-such-command", "x.pth"])
    assert outcome.returncode == 2
    assert "unknown command 'no-such-command'" in outcome.error


def test_a_command_error_is_captured_from_stderr(tmp_path: Path) -> None:
    outcome = run_command(
        ["knn", str(tmp_path / "missing.pth"), "--dataset", "digits", "--out", str(tmp_path)]
    )
    assert (
        outcome.returncode == 2
        and "missing.pth" in outcome.error
        and outcome.error.startswith("sslbench knn")
    )


def test_suite_files_are_validated(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  - {name: a, task: segmentation, dataset: digits}\n")
    with pytest.raises(ConfigError, match="segmentation"):
        load_suite(bad)
    bad.write_text("tasks:\n  - {name: a, task: knn, dataset: digits, options: {out: x}}\n")
    with pytest.raises(ConfigError, match="options out are set by the suite"):
        load_suite(bad)
    bad.write_text(
        "tasks:\n  - {name: a, task: knn, dataset: digits}\n  - {name: a, task: knn, dataset: digits}\n"
    )
    with pytest.raises(ConfigError, match="used twice"):
        load_suite(bad)
    assert load_suite("quick").tasks[1].options["protocol"] == "lbfgs"


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("{name: a, task: knn, dataset: digits, gpus: 0}", "gpus and nodes count processes"),
        ("{name: a, task: knn, dataset: digits, gpus: -2}", "gpus and nodes count processes"),
        ("{name: a, task: knn, dataset: digits, nodes: 0}", "gpus and nodes count processes"),
        ("{name: a, task: knn, dataset: digits, gpus: .nan}", "gpus"),
        ("{name: a, task: knn, dataset: digits, gpus: eight}", "gpus"),
        (
            "{name: a, task: detection, dataset: voc, options: {num-gpus: 8}}",
            "num-gpus come from the task's gpus",
        ),
        ("{name: a, task: knn, dataset: digits, slurm: {gpus_per_node: 8}}", "slurm gpus_per_node"),
        ("{name: a, task: knn, dataset: digits, options: {resume: true}}", "resume are set by the suite"),
    ],
)
def test_bad_gpus_nodes_and_resume_settings_exit_2_naming_the_task_and_start_nothing(
    setup: tuple[Path, Path, Path], tmp_path: Path, capsys, task: str, message: str
) -> None:
    checkpoint, _, _ = setup
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"tasks:\n  - {task}\n")
    out = tmp_path / "out"
    assert main(["suite", str(checkpoint), "--suite", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_local_suite_refuses_a_task_on_several_nodes_before_starting_anything(
    setup: tuple[Path, Path, Path], tmp_path: Path, capsys
) -> None:
    checkpoint, data, _ = setup
    suite_file = tmp_path / "nodes.yaml"
    suite_file.write_text(f"tasks:\n  - {{name: wide, task: knn, dataset: cub200, root: {data}, nodes: 2}}\n")
    out = tmp_path / "out"
    assert main(["suite", str(checkpoint), "--suite", str(suite_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "wide ask for several nodes" in err and "--launcher submitit" in err and not out.exists()


def test_a_job_stopped_by_a_signal_after_saving_stops_the_suite_with_143_and_records_no_failure(
    setup: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A training loop that got SIGTERM (a Slurm time limit) saves and returns 143: the suite stops
    there instead of recording a failure and starting the next task, and says how to continue."""
    checkpoint, _, suite_file = setup
    calls = []

    def stopped(argv):
        calls.append(argv[0])
        return suite_launch.CommandOutcome(suite_launch.EXIT_STOPPED, "stopped by a signal after step 3")

    monkeypatch.setattr(suite_launch, "run_command", stopped)
    out = tmp_path / "out"
    assert main(["suite", str(checkpoint), "--suite", str(suite_file), "--out", str(out)]) == 143
    err = capsys.readouterr().err
    assert "sslbench suite: stopped: a stop signal ended cub-knn seed 0" in err
    assert "run the same command again to continue" in err
    assert calls == ["knn"] and not list(out.rglob("result.json"))


def test_processes_enter_the_spec_hash_only_beyond_one_so_earlier_folders_still_count() -> None:
    task = TaskConfig(name="t", task="finetune", dataset="cub200", root="/data/CUB", options={"steps": 5000})
    assert spec_hash(task) == "29cbc5ee"  # what the suite computed before tasks had gpus and nodes
    wide = TaskConfig(**{**task.__dict__, "gpus": 2})
    assert spec_hash(wide) != spec_hash(task)


def test_a_detection_task_on_two_nodes_gets_its_machine_rank_and_rendezvous_from_the_submitit_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a submitit job (its environment variables as submitit's local executor sets them for
    the second node's task), the detect command line gets that node's rank and node 0's address."""
    pytest.importorskip("submitit")
    task = TaskConfig(
        name="voc", task="detection", dataset="voc", gpus=8, nodes=2, args=["SOLVER.MAX_ITER", "10"]
    )
    [job] = plan_jobs(suite_module.SuiteConfig(tasks=[task]), [(Path("/c.pth"), "3" * 64)], tmp_path)
    assert job.command.resources() == {"nodes": 2, "tasks_per_node": 1, "gpus_per_node": 8}
    environment = {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_JOB_ID": "4242",
        "SUBMITIT_LOCAL_NTASKS": "2",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "2",
        "SUBMITIT_LOCAL_NODEID": "1",
        "SUBMITIT_LOCAL_GLOBALID": "1",
        "SUBMITIT_LOCAL_LOCALID": "0",
    }
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    seen = []
    monkeypatch.setattr(
        suite_launch, "run_command", lambda argv: seen.append(argv) or suite_launch.CommandOutcome(0)
    )
    assert job.command().returncode == 0
    from submitit.helpers import TorchDistributedEnvironment

    node0 = TorchDistributedEnvironment()
    [argv] = seen
    assert argv[argv.index("--num-gpus") + 1] == "8" and argv[argv.index("--num-machines") + 1] == "2"
    assert argv[argv.index("--machine-rank") + 1] == "1"
    assert argv[argv.index("--dist-url") + 1] == f"tcp://{node0.master_addr}:{node0.master_port}"
    assert argv[-2:] == ["SOLVER.MAX_ITER", "10"] and "--resume" not in argv  # the folder is new


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("nodes: 2", "LocalExecutor can use only one node"),
        ("slurm: {partitoin: gpu}", "partitoin"),
    ],
)
def test_submitit_parameters_it_refuses_exit_2_before_any_job_is_submitted(
    setup: tuple[Path, Path, Path], tmp_path: Path, capsys, extra: str, message: str
) -> None:
    pytest.importorskip("submitit")
    checkpoint, data, _ = setup
    suite_file = tmp_path / "jobs.yaml"
    first = f"{{name: fine, task: knn, dataset: cub200, root: {data}}}"
    suite_file.write_text(
        f"tasks:\n  - {first}\n  - {{name: bad, task: knn, dataset: cub200, root: {data}, {extra}}}\n"
    )
    out = tmp_path / "out"
    argv = ["suite", str(checkpoint), "--suite", str(suite_file), "--out", str(out), "--launcher", "submitit"]
    assert main([*argv, "--cluster", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "task bad: submitit refused its parameters" in err and message in err and len(err.splitlines()) == 1
    )
    assert not list(out.rglob("*_submitted.pkl"))  # not even the valid first task was submitted


def test_submitit_launcher_runs_each_task_as_a_job(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """submitit's debug executor runs the jobs in this process; the job function must pickle."""
    pytest.importorskip("submitit")
    checkpoint, data, _ = setup
    function, argv = pickle.loads(pickle.dumps((run_command, ["knn", str(checkpoint)])))
    assert function is run_command and argv == ["knn", str(checkpoint)]
    task = TaskConfig(
        name="knn", task="knn", dataset="cub200", root=str(data), options={**SMALL, "knn": ["5:0.07"]}
    )
    task.options["primary"] = "5:0.07"
    suite = suite_module.SuiteConfig(tasks=[task])
    report = run_suite(suite, [checkpoint], tmp_path, launcher="submitit", cluster="debug")
    assert len(report.ran) == 1 and not report.failed
    assert read_record(report.ran[0].records[0]).status == "ok"
    assert (tmp_path / "submitit").is_dir()


# ---------------------------------------------------------------- killed suites rerun to the same result

REPO = Path(__file__).resolve().parent.parent


def _suite_argv(checkpoint: Path, suite_file: Path, out: Path, *extra: str) -> list[str]:
    suite = ["suite", str(checkpoint), "--suite", str(suite_file), "--out", str(out), *extra]
    return [sys.executable, "-m", "sslbench", *suite]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}


def _run_suite_process(argv: list[str]) -> str:
    done = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _kill_suite_when(argv: list[str], out: Path, pattern: str) -> None:
    """Start ``sslbench suite`` and SIGKILL it as soon as a file matching ``pattern`` exists under
    ``out`` (a state the command saves mid-run)."""
    process = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not list(out.glob(pattern)):
        assert process.poll() is None, f"the suite ended before {pattern}: {process.stderr.read()[-2000:]!r}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def _suite_with(base: Path, task: str) -> Path:
    path = base / "suite.yaml"
    path.write_text(f"tasks:\n{task}")
    return path


def test_a_suite_killed_mid_grid_continues_its_finetune_task_to_the_uninterrupted_result(
    setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    checkpoint, data, _ = setup
    suite_file = _suite_with(
        tmp_path,
        f"""  - name: cub-ft
    task: finetune
    dataset: cub200
    root: {data}
    options: {{steps: 2, save-every: 1, batch-size: 6, image-size: 16, workers: 0, device: cpu,
               grid-lr: [0.05, 0.005], grid-wd: [0]}}
""",
    )
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run_suite_process(_suite_argv(checkpoint, suite_file, whole))
    # killed in the second grid point, after its first step was saved
    _kill_suite_when(_suite_argv(checkpoint, suite_file, killed), killed, "*/*/seed0/grid/01_*/state.pth")
    [run] = killed.glob("*/cub-ft-*/seed0")
    assert not (run / "result.json").exists() and len(list(run.glob("grid/00_*/point.json"))) == 1

    log = _run_suite_process(_suite_argv(checkpoint, suite_file, killed))
    assert "(continuing an earlier attempt)" in log and " --resume " in log
    assert "suite: 1 ran, 0 already done, 0 failed" in log

    [reference] = whole.glob("*/cub-ft-*/seed0")
    first, again = read_record(reference / "result.json"), read_record(run / "result.json")
    assert again.status == "ok" and again.metrics == first.metrics
    assert again.extra["chosen"] == first.extra["chosen"]
    assert [row["skipped"] for row in again.extra["grid"]] == [True, False]  # point 0 was not redone
    for a, b in zip(first.extra["grid"], again.extra["grid"], strict=True):
        assert {k: v for k, v in a.items() if k.startswith("val_")} == {
            k: v for k, v in b.items() if k.startswith("val_")
        }
    [point] = run.glob("grid/01_*/point.json")
    assert json.loads(point.read_text())["resumed_from_step"] == 1  # continued, not restarted
    kept = torch.load(run / "best.pth", weights_only=True)
    expected = torch.load(reference / "best.pth", weights_only=True)
    assert {k: v for k, v in kept.items() if k != "model"} == {
        k: v for k, v in expected.items() if k != "model"
    }
    assert kept["model"].keys() == expected["model"].keys()
    assert all(_same_bytes(kept["model"][k], v) for k, v in expected["model"].items())


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes()


def test_a_suite_killed_during_the_sgd_linear_probe_continues_it_to_the_uninterrupted_result(
    setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    checkpoint, data, _ = setup
    suite_file = _suite_with(
        tmp_path,
        f"""  - name: cub-sgd
    task: linear
    dataset: cub200
    root: {data}
    options: {{protocol: sgd, epochs: 4, batch-size: 4, image-size: 16, workers: 0, device: cpu}}
""",
    )
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run_suite_process(_suite_argv(checkpoint, suite_file, whole))
    _kill_suite_when(_suite_argv(checkpoint, suite_file, killed), killed, "*/*/seed0/linear_state.pth")
    [run] = killed.glob("*/cub-sgd-*/seed0")
    assert not (run / "result.json").exists()

    log = _run_suite_process(_suite_argv(checkpoint, suite_file, killed))
    assert "(continuing an earlier attempt)" in log and "suite: 1 ran, 0 already done, 0 failed" in log

    [reference] = whole.glob("*/cub-sgd-*/seed0")
    first, again = read_record(reference / "result.json"), read_record(run / "result.json")
    assert again.status == "ok" and again.metrics == first.metrics
    assert again.extra["history"] == first.extra["history"]
    assert 1 <= again.extra["resumed_from_epoch"] < 4  # continued from a saved epoch, not restarted
    head = torch.load(run / "linear_state.pth", weights_only=True)["head"]
    reference_head = torch.load(reference / "linear_state.pth", weights_only=True)["head"]
    assert all(_same_bytes(head[k], reference_head[k]) for k in reference_head)


# ---------------------------------------------------------------- multi-process tasks, submitit requeue


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for thread in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                children = [int(c) for c in (thread / "children").read_text().split()]
                found += children
                todo += children
    return found


def _submitit_tasks(pid: int) -> list[int]:
    tasks = []
    for child in _descendants(pid):
        with contextlib.suppress(OSError):
            if b"submitit.core._submit" in Path(f"/proc/{child}/cmdline").read_bytes():
                tasks.append(child)
    return tasks


def test_a_two_process_submitit_job_preempted_mid_run_requeues_and_ends_like_an_uninterrupted_run(
    setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """submitit's LocalExecutor stands in for Slurm: a task of ``gpus: 2`` is one job of two tasks
    (DDP on gloo); SIGUSR2 to both, as Slurm signals a preempted job, makes rank 0 requeue the job,
    which resumes from the fine-tune state. The reference is the same task run locally by torchrun."""
    pytest.importorskip("submitit")
    if not Path("/proc/self/task").is_dir():
        pytest.skip("finding the job's task processes reads Linux's /proc")
    checkpoint, data, _ = setup
    suite_file = tmp_path / "ddp.yaml"
    suite_file.write_text(
        f"""slurm: {{timeout_min: 30}}
tasks:
  - name: cub-ddp
    task: finetune
    dataset: cub200
    root: {data}
    gpus: 2
    options: {{steps: 4, save-every: 1, batch-size: 6, image-size: 16, workers: 0, device: cpu,
               lr: 0.05, wd: 0}}
"""
    )
    local, cluster = tmp_path / "torchrun", tmp_path / "submitit"
    log = _run_suite_process(_suite_argv(checkpoint, suite_file, local))
    assert "torchrun --standalone --nproc-per-node 2 -m sslbench finetune" in log

    argv = _suite_argv(checkpoint, suite_file, cluster, "--launcher", "submitit", "--cluster", "local")
    suite = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not list(cluster.glob("*/*/seed0/final/state.pth")):  # step 1 of 4 saved
        assert suite.poll() is None and time.monotonic() < deadline, suite.communicate()[1][-2000:]
        time.sleep(0.02)
    tasks = _submitit_tasks(suite.pid)
    assert len(tasks) == 2
    for task in tasks:
        os.kill(task, signal.SIGUSR2)
    stdout, stderr = suite.communicate(timeout=600)
    assert suite.returncode == 0, stderr[-3000:]
    assert "suite: 1 ran, 0 already done, 0 failed" in stdout
    assert (
        "(1 node(s) x 2 task(s))" in stdout
        and "suite progress: 0/1 jobs done (0 before this run), 1 running" in stdout
    )
    assert "suite progress: 1/1 jobs done" in stdout

    [job_log] = cluster.glob("submitit/*/*_0_log.out")
    assert not (cluster / "submitit" / "%j").exists()  # submitit's staging folder is not left behind
    text = job_log.read_text()
    assert "this job is preempted" in text and "Requeued job" in text
    assert text.count("Starting with JobEnvironment") == 2  # the first attempt and the requeued one
    # the preemption signal went to the training loop first: it saved its state, then submitit requeued
    [job_err] = cluster.glob("submitit/*/*_0_log.err")
    assert "stopped by a signal after step" in job_err.read_text()
    [run] = cluster.glob("*/cub-ddp-*/seed0")
    assert 1 <= json.loads((run / "final" / "point.json").read_text())["resumed_from_step"] < 4

    [reference] = local.glob("*/cub-ddp-*/seed0")
    first, again = read_record(reference / "result.json"), read_record(run / "result.json")
    assert again.protocol["settings"]["world_size"] == first.protocol["settings"]["world_size"] == 2
    assert again.metrics == first.metrics and again.extra["history"] == first.extra["history"]
    kept = torch.load(run / "best.pth", weights_only=True)["model"]
    expected = torch.load(reference / "best.pth", weights_only=True)["model"]
    assert kept.keys() == expected.keys() and all(_same_bytes(kept[k], v) for k, v in expected.items())


def test_the_suite_eta_is_the_mean_job_time_times_the_jobs_left_or_once_when_they_run_side_by_side() -> None:
    progress = suite_module.SuiteProgress(total=6, done_before=2)
    progress.started -= 400  # the suite started 400 s ago
    assert progress.line().endswith("4 to go; elapsed 0:06:40; ETA after the first job")
    progress.finished(100)
    progress.finished(200)  # mean 150 s, 2 jobs left
    assert "4/6 jobs done (2 before this run), 2 to go; elapsed 0:06:40; ETA 0:05:00" in progress.line()
    progress.started += 300  # submitted together 100 s ago: each ends ~150 s after submission
    assert "2 running, 2 to go; elapsed 0:01:40; ETA 0:00:50 (side by side" in progress.line(
        2, side_by_side=True
    )


# ---------------------------------------------------------------- tasks for one family of checkpoints


def test_a_task_for_one_family_runs_only_on_checkpoints_of_that_family(
    setup: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ResNet and a ViT through one suite: the ViT-only task skips the ResNet (and the other way
    round) with a line saying why, no record; the family-free task runs on both."""
    from vit_sources import timm_file, tiny_vit

    checkpoint, data, _ = setup
    vit = tmp_path / "vit.pth"
    torch.save(timm_file(tiny_vit()), vit)
    knn = '{image-size: 32, batch-size: 16, workers: 0, knn: ["5:0.07"], primary: "5:0.07"}'
    suite_file = tmp_path / "families.yaml"
    suite_file.write_text(
        f"""
tasks:
  - {{name: knn-any, task: knn, dataset: cub200, root: {data}, options: {knn}}}
  - {{name: knn-vit, task: knn, dataset: cub200, root: {data}, family: vit, options: {knn}}}
  - {{name: knn-resnet, task: knn, dataset: cub200, root: {data}, family: resnet, options: {knn}}}
"""
    )
    out = tmp_path / "results"
    assert main(["suite", str(checkpoint), str(vit), "--suite", str(suite_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "suite: 4 ran, 0 already done, 0 failed, 2 not applicable to their checkpoint" in printed
    assert "not applicable, skipped: knn-vit is for vit checkpoints and resnet18.pth is a resnet" in printed
    assert "not applicable, skipped: knn-resnet is for resnet checkpoints and vit.pth is a vit" in printed
    ran = sorted(
        (record.parent.parent.name.rsplit("-", 1)[0], read_record(record).checkpoint["arch"][:3])
        for record in out.rglob("result.json")
    )
    assert ran == [("knn-any", "res"), ("knn-any", "vit"), ("knn-resnet", "res"), ("knn-vit", "vit")]


def test_an_unknown_task_family_is_one_line_before_anything_runs(
    setup: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, data, _ = setup
    suite_file = tmp_path / "bad.yaml"
    task = f"{{name: k, task: knn, dataset: cub200, root: {data}, family: vits}}"
    suite_file.write_text(f"tasks:\n  - {task}\n")
    out = tmp_path / "results"
    assert main(["suite", str(checkpoint), "--suite", str(suite_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "family 'vits' is not one of any, resnet, vit" in err
    assert not out.exists()
