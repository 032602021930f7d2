"""The shared training runtime: sampling, collectives and DDP on 2 CPU ranks (Gloo), progress lines.

Each DDP test spawns two processes that write what they computed to ``tmp_path``; the test compares
it with the same computation in one process (the independent oracle).
"""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sslbench.evaluate import coretuning
from sslbench.evaluate.features import extract_features, extract_split
from sslbench.evaluate.finetune import CoreTuningSettings, FinetuneModel
from sslbench.evaluate.linear import SgdSettings, epoch_loaders, train_linear_head
from sslbench.evaluate.linear_recipes import DinoLinearRecipe, LinearRecipe, MaeLinearRecipe
from sslbench.evaluate.protocol_defaults import DinoLinearSettings, MaeLinearSettings
from sslbench.runtime.collectives import gather_rows
from sslbench.runtime.precision import Precision
from sslbench.runtime.process import Runtime
from sslbench.runtime.progress import Eta, Progress
from sslbench.runtime.sampling import SeededBatches, shard

CPU = torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, job: Callable[..., None], args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0"
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        job(Runtime(rank, world, 0, CPU), *args)
    finally:
        dist.destroy_process_group()


def _on_two_ranks(job: Callable[..., None], *args: object) -> None:
    mp.spawn(_rank_main, args=(2, _free_port(), job, args), nprocs=2, join=True)


# ---------------------------------------------------------------- sampling


def test_seeded_batches_resume_mid_epoch_and_split_a_global_batch_into_rank_order_slices() -> None:
    whole = list(SeededBatches(23, 8, seed=5, start_step=0, end_step=9))
    assert all(len(b) == 8 for b in whole)  # 2 full batches per epoch; the 7 left over are dropped
    assert [b[0][0] for b in whole] == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert len({i for _, i in whole[0] + whole[1]}) == 16  # no repeats within an epoch
    assert list(SeededBatches(23, 8, seed=5, start_step=3, end_step=9)) == whole[3:]
    ranks = [list(SeededBatches(23, 8, 5, 0, 9, rank=r, world=2)) for r in (0, 1)]
    assert all(ranks[0][s] + ranks[1][s] == whole[s] for s in range(9))  # rank order = batch order


def test_kept_last_batch_is_split_unevenly_and_a_remainder_below_the_world_size_is_dropped() -> None:
    one = list(SeededBatches(21, 8, seed=1, start_step=0, end_step=3, drop_last=False))
    assert [len(b) for b in one] == [8, 8, 5]
    two = [list(SeededBatches(21, 8, 1, 0, 3, rank=r, world=2, drop_last=False)) for r in (0, 1)]
    assert [len(b) for b in two[0]] == [4, 4, 2] and [len(b) for b in two[1]] == [4, 4, 3]
    assert all(two[0][s] + two[1][s] == one[s] for s in range(3))
    # 17 = 2 x 8 + 1: one image cannot be shared by 2 ranks, so under DDP an epoch is 2 steps
    assert SeededBatches(17, 8, 1, 0, 0, 0, 2, drop_last=False).steps_per_epoch == 2
    assert SeededBatches(17, 8, 1, 0, 0, 0, 1, drop_last=False).steps_per_epoch == 3


def test_shards_in_rank_order_are_the_whole_range() -> None:
    assert [list(shard(11, r, 3)) for r in range(3)] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10]]


# ---------------------------------------------------------------- progress


def test_progress_off_a_terminal_prints_plain_lines_with_step_rate_and_eta(monkeypatch) -> None:
    monkeypatch.setenv("SSLBENCH_LOG_SECONDS", "0")
    stream = io.StringIO()
    bar = Progress(10, "fine-tune", initial=2, images_per_step=64, stream=stream)
    bar.update()
    bar.update()
    bar.note(loss=0.5)
    bar.update()
    bar.close()  # the last step has its line already: no repeat
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 3
    assert lines[0].startswith("fine-tune: step 3/10  ") and "images/s" in lines[0] and "ETA " in lines[0]
    assert lines[-1].startswith("fine-tune: step 5/10") and lines[-1].endswith("loss 0.5")


def test_eta_counts_only_the_pace_of_work_done_in_this_process() -> None:
    eta = Eta(100)
    eta.add(40, None)  # done by an earlier run: no pace
    assert eta.line("grid") == "grid: 40/100 steps done, ETA ?"
    eta.add(20, 10.0)  # 2 steps/s
    assert eta.remaining() == pytest.approx(20.0) and eta.line("grid").endswith("ETA 0:00:20")


# ---------------------------------------------------------------- DDP on two CPU ranks


def _images(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.rand(n, 3, 8, 8, generator=generator) + labels[:, None, None, None] * 0.5
    return TensorDataset(images, labels)


def _backbone() -> nn.Module:
    """No BatchNorm: under DDP its batch statistics would be per rank by design."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _extract_job(runtime: Runtime, out: Path) -> None:
    features, labels = extract_split(_backbone(), _images(11, 0), 3, 0, runtime, progress=False)
    # small chunks: several gather rounds with uneven shards
    rows = gather_rows(torch.arange(11)[list(shard(11, runtime.rank, 2))].float()[:, None], runtime, 2)
    torch.save({"features": features, "labels": labels, "rows": rows}, out / f"extract{runtime.rank}.pt")


def test_ddp_extraction_gathers_the_one_process_features_in_dataset_order(tmp_path: Path) -> None:
    _on_two_ranks(_extract_job, tmp_path)
    data = _images(11, 0)
    features, labels = extract_features(_backbone(), DataLoader(data, batch_size=3), CPU, progress=False)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"extract{rank}.pt", weights_only=True)
        assert torch.equal(got["labels"], labels) and torch.equal(got["labels"], data.tensors[1])
        assert torch.allclose(got["features"], features, atol=1e-6, rtol=0)
        assert got["rows"].flatten().tolist() == list(range(11))


SGD = SgdSettings(epochs=3, lr=0.5, batch_size=8, milestones=(0.5,), seed=4)


def _sgd_job(runtime: Runtime, out: Path) -> None:
    loaders = epoch_loaders(_images(21, 1), SGD, runtime)  # 8 + 8 + 5: the last batch split 2 / 3
    run = train_linear_head(_backbone(), 8, 3, loaders, SGD, CPU, progress=False, runtime=runtime)
    torch.save({"head": run.head.state_dict(), "history": run.history}, out / f"sgd{runtime.rank}.pt")


def test_ddp_sgd_probe_equals_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    _on_two_ranks(_sgd_job, tmp_path)
    one = Runtime(device=CPU)
    run = train_linear_head(
        _backbone(), 8, 3, epoch_loaders(_images(21, 1), SGD, one), SGD, CPU, progress=False
    )
    for rank in (0, 1):
        got = torch.load(tmp_path / f"sgd{rank}.pt", weights_only=True)
        for key, value in run.head.state_dict().items():
            assert torch.allclose(got["head"][key], value, atol=1e-5, rtol=1e-5), key
        assert [h["lr"] for h in got["history"]] == [h["lr"] for h in run.history]
        for a, b in zip(got["history"], run.history, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["train_top1"] == b["train_top1"]


DINO = DinoLinearRecipe(DinoLinearSettings(epochs=3, lr=0.5, batch_size=8, seed=4))
MAE = MaeLinearRecipe(MaeLinearSettings(epochs=3, warmup_epochs=1, lr=0.5, batch_size=8, seed=4))


def _recipe_job(runtime: Runtime, out: Path, recipe: LinearRecipe) -> None:
    loaders = epoch_loaders(_images(21, 1), recipe.settings, runtime, drop_last=recipe.drop_last)
    run = train_linear_head(_backbone(), 8, 3, loaders, recipe, CPU, progress=False, runtime=runtime)
    saved = {"head": run.head.state_dict(), "history": run.history}
    torch.save(saved, out / f"{recipe.name}{runtime.rank}.pt")


@pytest.mark.parametrize("recipe", [DINO, MAE], ids=["dino", "mae"])
def test_ddp_dino_and_mae_probes_run_one_global_batch_over_the_ranks(
    recipe: LinearRecipe, tmp_path: Path
) -> None:
    """DINO's head (a plain Linear) on 2 ranks equals one process. MAE's BatchNorm normalises each
    rank's share with its own batch statistics, as MAE does (no SyncBN), so only the lr schedule is
    compared with one process; both ranks end with the same weights."""
    _on_two_ranks(_recipe_job, tmp_path, recipe)
    one = Runtime(device=CPU)
    loaders = epoch_loaders(_images(21, 1), recipe.settings, one, drop_last=recipe.drop_last)
    run = train_linear_head(_backbone(), 8, 3, loaders, recipe, CPU, progress=False)
    ranks = [torch.load(tmp_path / f"{recipe.name}{r}.pt", weights_only=True) for r in (0, 1)]
    for key in run.head.state_dict():
        # DDP sends rank 0's buffers at each forward, then each rank's BatchNorm updates its running
        # statistics with its own share: they differ at the end (rank 0's head is the one scored)
        same = torch.equal(ranks[0]["head"][key], ranks[1]["head"][key])
        assert same or (recipe is MAE and "running_" in key), key
    assert [h["lr"] for h in ranks[0]["history"]] == [h["lr"] for h in run.history]
    if recipe is DINO:
        for key, value in run.head.state_dict().items():
            assert torch.allclose(ranks[0]["head"][key], value, atol=1e-5, rtol=1e-5), key
        for a, b in zip(ranks[0]["history"], run.history, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["train_top1"] == b["train_top1"]


def _coretuning_model() -> FinetuneModel:
    model = FinetuneModel(_backbone(), 8, 3, "coretuning", CoreTuningSettings(contrast_dim=4))
    torch.manual_seed(1)
    for module in (model.classifier, model.contrast_head):
        for p in module.parameters():  # type: ignore[union-attr]
            nn.init.normal_(p, std=0.3)
    return model


def _global_batch() -> tuple[torch.Tensor, torch.Tensor, coretuning.MixDraws]:
    images, labels = _images(8, 2).tensors
    labels = torch.tensor([0, 1, 2, 0, 1, 0, 2, 1])  # every class on both ranks' halves and across them
    return images, labels, coretuning.draw_mixing(8, 1.0, (3, 0))


def _coretuning_job(runtime: Runtime, out: Path) -> None:
    model = _coretuning_model()
    model.runtime = runtime
    net = runtime.wrap(model)
    images, labels, draws = _global_batch()
    local = slice(4 * runtime.rank, 4 * runtime.rank + 4)
    result = net(images[local], labels[local], draws)
    result["loss"].backward()  # DDP averages the gradients over the ranks here
    grads = {name: p.grad for name, p in model.named_parameters()}
    torch.save({"loss": result["loss"].detach(), "grads": grads}, out / f"core{runtime.rank}.pt")


def test_coretuning_loss_and_gradients_on_two_ranks_equal_one_process(tmp_path: Path) -> None:
    _on_two_ranks(_coretuning_job, tmp_path)
    model = _coretuning_model()
    images, labels, draws = _global_batch()
    result = model(images, labels, draws)
    result["loss"].backward()
    assert float(result["contrastive"]) > 0  # the contrastive term takes part
    for rank in (0, 1):
        got = torch.load(tmp_path / f"core{rank}.pt", weights_only=True)
        assert torch.allclose(got["loss"], result["loss"].detach(), atol=1e-6)
        for name, p in model.named_parameters():
            assert torch.allclose(got["grads"][name], p.grad, atol=1e-6, rtol=1e-5), name


@pytest.mark.gpu
def test_cuda_precision_is_bf16_autocast_with_channels_last_and_fp32_on_the_cpu() -> None:
    conv = nn.Conv2d(3, 4, 3)
    cuda = Precision(torch.device("cuda"))
    assert (cuda.name, Precision(CPU).name) == ("bf16-autocast", "fp32")
    model = cuda.model(conv)
    images = cuda.images(torch.rand(2, 3, 8, 8))
    assert images.is_cuda and images.is_contiguous(memory_format=torch.channels_last)
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    with cuda.autocast():
        assert model(images).dtype == torch.bfloat16
    with Precision(torch.device("cuda"), amp=False, channels_last=False).autocast():
        assert model(images).dtype == torch.float32
