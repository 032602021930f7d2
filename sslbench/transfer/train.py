"""Run a detection task through Detectron2's engine and launcher; one result record per seed.

Per seed ``N`` the run folder is ``OUT/seed<N>`` (Detectron2's ``OUTPUT_DIR``: ``config.yaml``,
``log.txt``, ``metrics.json``, ``model_*.pth``, ``last_checkpoint``, ``inference/``) and the record
``OUT/seed<N>/result.json``. All seeds start from ``OUT/backbone.pkl``, the converted checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, default_setup, launch
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, PascalVOCDetectionEvaluator
from detectron2.utils.logger import setup_logger
from torch import nn

from sslbench.checkpoints.canonical import CanonicalCheckpoint
from sslbench.checkpoints.writers import write_detectron2
from sslbench.errors import CheckpointError, ConfigError, RecordError
from sslbench.run_folder import check_backbone_source
from sslbench.tools.records import RECORD_NAME, ResultRecord, read_record, write_record
from sslbench.transfer.config import build_config, check_world_size, protocol_settings
from sslbench.transfer.datasets import check_datasets, datasets_root, register_fixture_datasets
from sslbench.transfer.tasks import PROTOCOL_SOURCE, TASKS

WEIGHTS_NAME = "backbone.pkl"


class DetectionTrainer(DefaultTrainer):
    """Detectron2's DefaultTrainer (PreciseBN, checkpoints, evaluation after the last iteration)
    with the evaluator each dataset's registration asks for."""

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
    ) -> DatasetEvaluator:
        kind = MetadataCatalog.get(dataset_name).get("evaluator_type")
        if kind == "pascal_voc":  # VOC07 11-point AP at IoU 0.50:0.95, as MoCo reports it
            return PascalVOCDetectionEvaluator(dataset_name)
        if kind == "coco":  # box AP, and mask AP when the model predicts masks
            return COCOEvaluator(
                dataset_name, output_dir=output_folder or str(Path(cfg.OUTPUT_DIR) / "inference")
            )
        raise ConfigError(f"dataset {dataset_name!r} has evaluator_type {kind!r}: no VOC or COCO evaluator")


def verify_backbone_loaded(model: nn.Module, weights: str | Path) -> int:
    """Every tensor of the converted checkpoint is in ``model`` exactly; returns how many.

    Detectron2's loader only warns about keys it could not match; a silently random backbone would
    still train and report a plausible, wrong AP. The stem and res2-res4 live in ``backbone.``,
    res5 in ``roi_heads.res5.`` (C4).
    """
    with open(weights, "rb") as f:
        stored = pickle.load(f)["model"]
    state = getattr(model, "module", model).state_dict()  # unwrap DistributedDataParallel
    problems = []
    for key, array in stored.items():
        name = next((p + key for p in ("backbone.", "roi_heads.") if p + key in state), None)
        if name is None:
            problems.append(f"{key} (no such parameter in the model)")
        elif not torch.equal(state[name].detach().cpu(), torch.as_tensor(array).to(state[name].dtype)):
            problems.append(f"{name} (differs from the checkpoint)")
    if problems:
        raise CheckpointError(
            f"{weights}: {len(problems)} of {len(stored)} backbone tensors did not load into the detector: "
            + ", ".join(problems[:8])
        )
    return len(stored)


def _reset_detectron2_logging() -> None:
    """Drop the handlers of a previous run in this process, so each ``log.txt`` and the console show
    one run each (``setup_logger`` is cached per folder: clear it so a resumed run logs again)."""
    for name in ("detectron2", "fvcore"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    setup_logger.cache_clear()


def build_trainer(cfg: CfgNode, resume: bool) -> DetectionTrainer:
    """The trainer, with its weights loaded: the last checkpoint when resuming one, else the backbone
    (verified tensor by tensor)."""
    trainer = DetectionTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    if not (resume and trainer.checkpointer.has_checkpoint()):
        verify_backbone_loaded(trainer.model, cfg.MODEL.WEIGHTS)
    return trainer


def train_worker(cfg: CfgNode, resume: bool) -> None:
    """What each process launched by ``detectron2.engine.launch`` runs."""
    register_fixture_datasets()
    _reset_detectron2_logging()
    default_setup(cfg, argparse.Namespace(resume=resume, eval_only=False))
    build_trainer(cfg, resume).train()


def read_evaluation(metrics_json: Path, task: str) -> tuple[dict[str, float], dict[str, Any]]:
    """The final evaluation Detectron2 wrote to ``metrics.json`` -> (record metrics, extra details).

    The EvalHook flattens the evaluator's results (``bbox/AP``, ``segm/AP50``, ``bbox/AP-cat``, ...,
    in percent) into the last event line of the run. Metrics that COCO leaves undefined (NaN: e.g.
    APs when the test set holds no small object) are listed in ``extra`` instead.
    """
    headline = TASKS[task].metrics[0][1]
    final = None
    if metrics_json.is_file():
        for line in metrics_json.read_text(encoding="utf-8").splitlines():
            event = json.loads(line) if line.strip() else {}
            if headline in event:
                final = event
    if final is None:
        raise RecordError(f"{metrics_json}: no evaluation results ({headline}) from Detectron2's evaluator")
    metrics, undefined = {}, []
    for name, key in TASKS[task].metrics:
        value = float(final[key])
        if math.isfinite(value):
            metrics[name] = value
        else:
            undefined.append(name)
    per_class = {k: v for k, v in final.items() if "/AP-" in k and isinstance(v, (int, float))}
    return metrics, {
        "undefined_metrics": undefined,
        "per_class_AP": per_class,
        "iteration": final.get("iteration"),
    }


def _dataset_info(cfg: CfgNode) -> dict[str, Any]:
    test = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(test)
    return {
        "name": test,
        "root": str(datasets_root()),
        "split": meta.get("split") or test.rsplit("_", 1)[-1],
        "train": list(cfg.DATASETS.TRAIN),
        "test": list(cfg.DATASETS.TEST),
    }


def _check_devices(device: str, num_gpus: int) -> None:
    if device == "cpu" and num_gpus > 1:  # Detectron2 wraps the model in DDP with device_ids=[local rank]
        raise ConfigError(f"--num-gpus {num_gpus} on CPU: Detectron2 trains on CPU in one process only")
    if device == "cuda" and num_gpus > torch.cuda.device_count():
        raise ConfigError(f"--num-gpus {num_gpus}, but this machine has {torch.cuda.device_count()} GPUs")


def _check_run_folder(folder: Path, resume: bool) -> bool:
    """Whether this seed is already done; refuses to overwrite a previous run unless resuming."""
    record = folder / RECORD_NAME
    done = record.is_file() and read_record(record).status == "ok"
    if not resume and (record.is_file() or (folder / "last_checkpoint").is_file()):
        raise ConfigError(
            f"{folder} holds a previous run; pass --resume to continue it, or choose another --out"
        )
    return done


def _seed_configs(
    ckpt: CanonicalCheckpoint,
    task: str,
    out: Path,
    seeds: Sequence[int],
    num_gpus: int,
    world_size: int,
    total_batch: int | None,
    resume: bool,
    overrides: Sequence[str],
) -> list[tuple[int, CfgNode, bool]]:
    """(seed, Detectron2 config, already done) per seed, every config checked before any training."""
    configs = []
    for seed in seeds:
        cfg = build_config(
            task,
            weights=out / WEIGHTS_NAME,
            output_dir=out / f"seed{seed}",
            seed=seed,
            arch=ckpt.arch,
            total_batch=total_batch,
            overrides=overrides,
        )
        check_world_size(cfg, world_size)
        _check_devices(cfg.MODEL.DEVICE, num_gpus)
        check_datasets(cfg.DATASETS.TRAIN, cfg.DATASETS.TEST, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        configs.append((seed, cfg, _check_run_folder(Path(cfg.OUTPUT_DIR), resume)))
    return configs


def _train_seed(
    record: ResultRecord,
    cfg: CfgNode,
    task: str,
    resume: bool,
    num_gpus: int,
    num_machines: int,
    machine_rank: int,
    dist_url: str,
) -> Path | None:
    """Train and evaluate one seed; machine 0 writes its record (a failed one when training raised)."""
    folder = Path(cfg.OUTPUT_DIR)
    try:
        launch(
            train_worker,
            num_gpus,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=(cfg, resume),
        )
        if machine_rank != 0:
            return None
        record.metrics, details = read_evaluation(folder / "metrics.json", task)
    except Exception as exc:
        if machine_rank == 0:
            record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
            write_record(folder, record)
        raise
    record.extra = {
        "output_dir": str(folder),
        "config": str(folder / "config.yaml"),
        "weights": str(cfg.MODEL.WEIGHTS),
        **details,
    }
    return write_record(folder, record)


def run_detection(
    ckpt: CanonicalCheckpoint,
    task: str,
    out: Path,
    *,
    seeds: Sequence[int] = (0,),
    num_gpus: int = 1,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    total_batch: int | None = None,
    resume: bool = False,
    overrides: Sequence[str] = (),
) -> list[Path]:
    """Convert ``ckpt``, then train and evaluate ``task`` once per seed; returns the records written.

    Every machine of a multi-machine job runs this with its own ``machine_rank``; the records are
    written by machine 0, whose process 0 is Detectron2's main process.
    """
    if num_gpus < 1 or num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise ConfigError(
            f"need --num-gpus >= 1, --num-machines >= 1 and 0 <= --machine-rank < --num-machines; got "
            f"{num_gpus}, {num_machines}, {machine_rank}"
        )
    if num_machines > 1 and dist_url == "auto":
        raise ConfigError("a multi-machine job needs --dist-url tcp://<machine 0's address>:<port>")
    world_size = num_gpus * num_machines
    register_fixture_datasets()
    configs = _seed_configs(ckpt, task, out, seeds, num_gpus, world_size, total_batch, resume, overrides)
    if machine_rank == 0:  # a resumed run continues from the checkpoint it started from, or not at all
        check_backbone_source(out, ckpt.describe(), resume)
    write_detectron2(ckpt, out / WEIGHTS_NAME)

    records = []
    for seed, cfg, done in configs:
        if done:
            records.append(Path(cfg.OUTPUT_DIR) / RECORD_NAME)
            continue
        record = ResultRecord(
            task="detection",
            protocol={
                "name": f"detectron2-moco-{task}",
                "source": PROTOCOL_SOURCE,
                "settings": protocol_settings(cfg, task, world_size, overrides),
            },
            dataset=_dataset_info(cfg),
            metrics={},
            checkpoint=ckpt.describe(),
            seed=seed,
        )
        written = _train_seed(record, cfg, task, resume, num_gpus, num_machines, machine_rank, dist_url)
        if written is not None:
            records.append(written)
    return records
