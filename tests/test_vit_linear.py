"""DINO's and MAE's linear-probe recipes on ViT checkpoints (``linear --protocol dino|mae``).

Each piece is checked against an independent computation: DINO's feature against the timm model's
blocks run by hand in DINO's order; the training steps against plain-tensor transcriptions of the
sources' update rules (SGD with momentum and a per-epoch cosine for DINO; BatchNorm without affine,
MAE's LARS and its per-iteration warm-up + cosine for MAE); the command end to end on every source
layout, its resume after SIGTERM, and its refusals.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from bad_input_helpers import refused, small_checkpoint, snapshot
from timm.models.vision_transformer import VisionTransformer
from timm.optim import Lars as TimmLars
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from vit_sources import ARCH, DEPTH, IMAGE, LAYOUTS, WIDTH, tiny_vit, write_layouts

import sslbench.evaluate.linear as linear_module
from sslbench.cli import main
from sslbench.data import fixtures
from sslbench.data.registry import build_dataset
from sslbench.data.transforms import eval_transform
from sslbench.evaluate.lars import Lars
from sslbench.evaluate.linear import train_linear_head
from sslbench.evaluate.linear_recipes import DinoLinearRecipe, MaeLinearRecipe
from sslbench.evaluate.metrics import accuracy_metrics
from sslbench.evaluate.protocol_defaults import DinoLinearSettings, MaeLinearSettings, dino_recipe_for_width
from sslbench.models.vit_features import DinoLinearFeatures
from sslbench.tools.records import read_record

CPU = torch.device("cpu")
COMMON = ["--image-size", str(IMAGE), "--batch-size", "8", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def vit() -> VisionTransformer:
    return tiny_vit(seed=0).eval()


@pytest.fixture(scope="module")
def files(vit: VisionTransformer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_layouts(vit, tmp_path_factory.mktemp("vit_ckpts"))


@pytest.fixture(scope="module")
def cub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixtures.write_cub(tmp_path_factory.mktemp("cub"), num_classes=4, per_class=6, size=IMAGE).root


# ---------------------------------------------------------------- DINO's feature


def _blocks_by_hand(vit: VisionTransformer, images: torch.Tensor) -> list[torch.Tensor]:
    """The tokens after every block, each through the final norm (DINO get_intermediate_layers)."""
    tokens = vit.patch_embed(images)
    tokens = torch.cat([vit.cls_token.expand(len(images), -1, -1), tokens], dim=1) + vit.pos_embed
    normed = []
    for block in vit.blocks:
        tokens = block(tokens)
        normed.append(vit.norm(tokens))
    return normed


@pytest.mark.parametrize(("n_last", "avgpool"), [(2, False), (1, False), (1, True)])
def test_dino_features_equal_the_blocks_run_by_hand_in_dinos_order(
    vit: VisionTransformer, n_last: int, avgpool: bool
) -> None:
    images = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = DinoLinearFeatures(vit, n_last, avgpool)(images)
        normed = _blocks_by_hand(vit, images)[-n_last:]
    cls = torch.cat([x[:, 0] for x in normed], dim=1)  # block order, each (3, WIDTH)
    if avgpool:  # DINO's cat(..., dim=-1).reshape: element i of the CLS token, then element i of the mean
        expected = torch.empty(3, 2 * WIDTH)
        expected[:, 0::2] = cls
        expected[:, 1::2] = normed[-1][:, 1:].mean(dim=1)
    else:
        expected = cls
    assert ours.shape == (3, WIDTH * (n_last + int(avgpool)))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_dino_layout_rules_refuse_what_dino_cannot_compute(vit: VisionTransformer) -> None:
    cases = ((0, False, "not in 1..2"), (3, False, "not in 1..2"), (2, True, "needs n_last"))
    for n_last, avgpool, why in cases:
        with pytest.raises(ValueError, match=why):
            DinoLinearFeatures(vit, n_last, avgpool)
    # DINO eval_linear.py's help: n=4 for ViT-S (width 384), n=1 + avgpool for ViT-B (768)
    recipes = [dino_recipe_for_width(w) for w in (192, 384, 768, 1024)]
    assert recipes == [(4, False), (4, False), (1, True), (1, True)]


# ---------------------------------------------------------------- training steps against the sources' rules


def _feature_batches(n: int = 12, dim: int = 6, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    features = torch.randn(n, dim, generator=g) + 2.0 * F.one_hot(labels, dim).float()
    return TensorDataset(features, labels)


def _in_order(data: TensorDataset, batch: int) -> Callable[[int], DataLoader]:
    return lambda epoch: DataLoader(data, batch_size=batch, shuffle=False)


def _batches(data: TensorDataset, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = data.tensors
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]


def test_dino_steps_equal_sgd_momentum_with_a_per_epoch_cosine_by_hand(tmp_path: Path) -> None:
    data, epochs, batch = _feature_batches(), 3, 4
    settings = DinoLinearSettings(epochs=epochs, base_lr=0.5, batch_size=batch, seed=3)
    state = tmp_path / "linear_state.pth"
    run = train_linear_head(
        nn.Identity(), 6, 3, _in_order(data, batch), DinoLinearRecipe(settings), CPU, state, progress=False
    )

    lr0 = 0.5 * batch / 256  # DINO: args.lr * global batch / 256
    torch.manual_seed(3)
    nn.Linear(6, 3)  # the recipe's Linear draws its own initialisation first: consume it alike
    weight = torch.empty(3, 6).normal_(0.0, 0.01)  # DINO's LinearClassifier: N(0, 0.01), bias 0
    bias = torch.zeros(3)
    buffers: list[torch.Tensor | None] = [None, None]
    lrs = []
    for epoch in range(epochs):
        lr = 0.5 * lr0 * (1 + math.cos(math.pi * epoch / epochs))  # CosineAnnealingLR, eta_min 0
        lrs.append(lr)
        for x, y in _batches(data, batch):
            w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
            grads = torch.autograd.grad(F.cross_entropy(x @ w.T + b, y), (w, b))
            for k, (param, grad) in enumerate(zip((weight, bias), grads, strict=True)):
                previous = buffers[k]  # torch SGD, dampening 0: the first buffer is the gradient
                buffers[k] = grad.clone() if previous is None else 0.9 * previous + grad
                param -= lr * buffers[k]

    assert [row["lr"] for row in run.history] == pytest.approx(lrs, rel=1e-12)
    torch.testing.assert_close(run.head.weight.detach(), weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(run.head.bias.detach(), bias, rtol=1e-6, atol=1e-7)
    saved = torch.load(state, weights_only=True)["optimizer"]["state"]
    torch.testing.assert_close(saved[0]["momentum_buffer"], buffers[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(saved[1]["momentum_buffer"], buffers[1], rtol=1e-6, atol=1e-7)


def _mae_lr_by_hand(t: float, peak: float, warmup: int, epochs: int) -> float:
    if t < warmup:
        return peak * t / warmup
    return peak * 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / (epochs - warmup)))


def _lars_by_hand(param: torch.Tensor, grad: torch.Tensor, mu: torch.Tensor, lr: float, wd: float) -> None:
    """MAE util/lars.py on one tensor, written out: decay and trust ratio for matrices only."""
    update = grad.clone()
    if param.ndim > 1:
        update = update + wd * param
        p_norm, u_norm = param.norm().item(), update.norm().item()
        if p_norm > 0 and u_norm > 0:
            update = update * (0.001 * p_norm / u_norm)
    mu.mul_(0.9).add_(update)
    param.sub_(lr * mu)


def test_mae_steps_equal_bn_without_affine_lars_and_warmup_cosine_by_hand(tmp_path: Path) -> None:
    data, epochs, warmup, batch, wd = _feature_batches(14), 3, 1, 4, 0.05  # 14 // 4: 3 steps, 2 dropped
    settings = MaeLinearSettings(
        epochs=epochs, warmup_epochs=warmup, base_lr=8.0, batch_size=batch, weight_decay=wd, seed=5
    )
    state = tmp_path / "linear_state.pth"

    def loader(epoch: int) -> DataLoader:
        return DataLoader(data, batch_size=batch, shuffle=False, drop_last=True)

    recipe = MaeLinearRecipe(settings)
    run = train_linear_head(nn.Identity(), 6, 3, loader, recipe, CPU, state, progress=False)

    peak = 8.0 * batch / 256
    torch.manual_seed(5)
    nn.Linear(6, 3)  # consumed by the recipe's Linear before MAE's trunc_normal_(std=0.01)
    weight = nn.init.trunc_normal_(torch.empty(3, 6), std=0.01, a=-2.0, b=2.0)
    bias = torch.zeros(3)
    mu_w, mu_b = torch.zeros_like(weight), torch.zeros_like(bias)
    running_mean, running_var = torch.zeros(6), torch.ones(6)
    lrs = []
    batches = _batches(data, batch)[:3]
    for epoch in range(epochs):
        for step, (x, y) in enumerate(batches):
            lr = _mae_lr_by_hand(step / 3 + epoch, peak, warmup, epochs)
            lrs.append(lr)
            mean, var = x.mean(0), x.var(0, unbiased=False)
            normed = (x - mean) / torch.sqrt(var + 1e-6)  # BatchNorm1d(affine=False, eps=1e-6), train mode
            running_mean = 0.9 * running_mean + 0.1 * mean
            running_var = 0.9 * running_var + 0.1 * x.var(0, unbiased=True)
            w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
            grad_w, grad_b = torch.autograd.grad(F.cross_entropy(normed @ w.T + b, y), (w, b))
            _lars_by_hand(weight, grad_w, mu_w, lr, wd)
            _lars_by_hand(bias, grad_b, mu_b, lr, wd)

    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(peak / 3)  # warm-up from 0, per iteration
    assert [row["lr"] for row in run.history] == pytest.approx(lrs[::3], rel=1e-12)
    bn, linear = run.head[0], run.head[1]
    assert bn.weight is None and bn.eps == 1e-6
    torch.testing.assert_close(linear.weight.detach(), weight, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(linear.bias.detach(), bias, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(bn.running_mean, running_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(bn.running_var, running_var, rtol=1e-6, atol=1e-7)
    saved = torch.load(state, weights_only=True)["optimizer"]["state"]
    torch.testing.assert_close(saved[0]["mu"], mu_w, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(saved[1]["mu"], mu_b, rtol=1e-5, atol=1e-8)


def test_timm_lars_is_not_maes_rule_at_zero_weight_decay_hence_our_lars() -> None:
    torch.manual_seed(0)
    start = torch.randn(3, 4)
    grad = torch.randn(3, 4)
    results = []
    for make in (lambda p: Lars([p], lr=0.1), lambda p: TimmLars([p], lr=0.1, momentum=0.9)):
        p = nn.Parameter(start.clone())
        p.grad = grad.clone()
        make(p).step()
        results.append(p.detach())
    ours, timm = results
    torch.testing.assert_close(timm, start - 0.1 * grad)  # timm at wd 0: plain SGD, no trust ratio
    torch.testing.assert_close(ours, start - 0.1 * 0.001 * start.norm() / grad.norm() * grad)


def test_mae_crop_clips_one_draw_to_the_image_where_torchvision_falls_back_to_a_centre_crop() -> None:
    from PIL import Image
    from torchvision import transforms as T

    from sslbench.data.transforms import SingleDrawResizedCrop

    wide = Image.new("RGB", (100, 20))  # a square box of the whole area (45 x 45) cannot fit
    for seed in range(5):
        torch.manual_seed(seed)
        top, left, h, w = SingleDrawResizedCrop.get_params(wide, [1.0, 1.0], [1.0, 1.0])
        assert (h, w) == (20, 45) and top == 0 and 0 <= left <= 55  # round(sqrt(2000)) = 45, clipped to 20
        torch.manual_seed(seed)
        assert T.RandomResizedCrop.get_params(wide, [1.0, 1.0], [1.0, 1.0]) == (0, 40, 20, 20)


# ---------------------------------------------------------------- the command


def _linear(ckpt: Path, cub: Path, out: Path, protocol: str, *extra: str) -> list[str]:
    data = ["--dataset", "cub200", "--root", str(cub), "--out", str(out)]
    return ["linear", str(ckpt), "--protocol", protocol, *data, *COMMON, *extra]


@pytest.mark.parametrize("source", LAYOUTS)
def test_dino_and_mae_commands_run_on_every_source_layout_and_record_their_recipe(
    source: str, files: dict[str, Path], cub: Path, tmp_path: Path
) -> None:
    one_epoch = ["--epochs", "1"]
    assert main(_linear(files[source], cub, tmp_path / "dino", "dino", *one_epoch, "--n-last-blocks=2")) == 0
    dino = read_record(tmp_path / "dino" / "result.json")
    settings = dino.protocol["settings"]
    assert dino.protocol["name"] == "linear-dino" and "dino eval_linear.py" in dino.protocol["source"]
    layout = (settings["n_last_blocks"], settings["avgpool_patchtokens"], settings["feature_dim"])
    assert layout == (2, False, 2 * WIDTH)
    assert settings["effective_lr"] == pytest.approx(0.001 * 8 / 256) and settings["batch_size"] == 8
    assert "CosineAnnealingLR" in settings["schedule"] and settings["test_metric_epoch"] == "last"
    assert "last 2 blocks" in settings["features"] and dino.checkpoint["arch"] == ARCH
    assert dino.extra["features"]["test"]["dim"] == 2 * WIDTH

    assert main(_linear(files[source], cub, tmp_path / "mae", "mae", *one_epoch, "--warmup-epochs=0")) == 0
    mae = read_record(tmp_path / "mae" / "result.json")
    settings = mae.protocol["settings"]
    assert mae.protocol["name"] == "linear-mae" and "util/lars.py" in mae.protocol["source"]
    assert settings["effective_lr"] == pytest.approx(0.1 * 8 / 256) and settings["warmup_epochs"] == 0
    assert "BatchNorm1d(D, affine=False, eps=1e-06)" in settings["head"] and "LARS" in settings["optimizer"]
    assert settings["drop_last"] is True and "SingleDrawResizedCrop" in settings["train_transform"]
    assert "bicubic" in settings["train_transform"] and settings["feature"] == "cls"
    assert len(mae.extra["history"]) == 1 and mae.extra["sanity_check"] == "backbone unchanged"


def _dino_test_features(vit: VisionTransformer, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = build_dataset("cub200", root, "test", eval_transform(IMAGE))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        last = _blocks_by_hand(vit, images)[-1]
    features = torch.stack((last[:, 0], last[:, 1:].mean(1)), dim=-1).flatten(1)
    return features, torch.tensor(dataset.targets)


def _sigterm_in_epoch(monkeypatch: pytest.MonkeyPatch, at_epoch: int) -> None:
    """``epoch_loaders`` whose loader sends this process SIGTERM at the first batch of ``at_epoch``."""
    real = linear_module.epoch_loaders

    def patched(*args: object, **kwargs: object) -> Callable[[int], object]:
        loader_for = real(*args, **kwargs)  # type: ignore[arg-type]

        class Stopping:
            def __init__(self, loader: DataLoader) -> None:
                self.loader = loader

            def __len__(self) -> int:
                return len(self.loader)

            def __iter__(self) -> Iterator[object]:
                for i, batch in enumerate(self.loader):
                    if i == 0:
                        os.kill(os.getpid(), signal.SIGTERM)
                    yield batch

        return lambda epoch: Stopping(loader_for(epoch)) if epoch == at_epoch else loader_for(epoch)

    monkeypatch.setattr(linear_module, "epoch_loaders", patched)


@pytest.mark.parametrize("protocol", ["dino", "mae"])
def test_a_run_stopped_by_sigterm_resumes_to_the_uninterrupted_head_and_scores_it_on_test(
    protocol: str,
    files: dict[str, Path],
    vit: VisionTransformer,
    cub: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    extra = ["--epochs", "2", "--lr", "0.05"]
    dino_b = ["--n-last-blocks", "1", "--avgpool-patchtokens"]  # DINO's ViT-B layout
    extra += dino_b if protocol == "dino" else ["--warmup-epochs", "1"]
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert main(_linear(files["mocov3"], cub, straight, protocol, *extra)) == 0
    with monkeypatch.context() as patch:
        _sigterm_in_epoch(patch, at_epoch=1)
        assert main(_linear(files["mocov3"], cub, cut, protocol, *extra)) == 143
    assert not (cut / "result.json").exists()
    assert len(torch.load(cut / "linear_state.pth", weights_only=True)["history"]) == 1
    assert main(_linear(files["mocov3"], cub, cut, protocol, *extra)) == 0

    a = torch.load(straight / "linear_state.pth", weights_only=True)
    b = torch.load(cut / "linear_state.pth", weights_only=True)
    assert a["head"].keys() == b["head"].keys()
    for key in a["head"]:
        assert torch.equal(a["head"][key], b["head"][key]), key
    first, second = read_record(straight / "result.json"), read_record(cut / "result.json")
    assert second.extra["resumed_from_epoch"] == 1 and second.metrics == first.metrics
    if protocol == "dino":  # the recorded metrics are the saved head on DINO's test features
        features, labels = _dino_test_features(vit, cub)
        head = nn.Linear(2 * WIDTH, 4)
        head.load_state_dict(a["head"])
        with torch.no_grad():
            expected = accuracy_metrics(head(features), labels)
        assert first.metrics == pytest.approx(expected)


def test_linear_bad_values_are_one_line_and_write_nothing(
    files: dict[str, Path], cub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    resnet = small_checkpoint(tmp_path / "resnet.pth")
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    dino = files["dino"]
    refused(capsys, _linear(dino, cub, out, "dino", "--n-last-blocks", "0"), "argument --n-last-blocks")
    refused(capsys, _linear(dino, cub, out, "dino", "--n-last-blocks", "-1"), "argument --n-last-blocks")
    too_deep = _linear(dino, cub, out, "dino", "--n-last-blocks", "3")
    refused(capsys, too_deep, "--n-last-blocks 3", "not in 1..2")
    refused(capsys, _linear(dino, cub, out, "dino"), "--n-last-blocks 4 (DINO's default for this width)")
    refused(
        capsys,
        _linear(dino, cub, out, "dino", "--n-last-blocks", "2", "--avgpool-patchtokens"),
        "avgpool_patchtokens needs n_last_blocks 1",
    )
    refused(capsys, _linear(resnet, cub, out, "dino", "--n-last-blocks", "1"), "on a ResNet", "for ViTs")
    refused(capsys, _linear(resnet, cub, out, "mae"), "--protocol mae on a ResNet")
    refused(capsys, _linear(dino, cub, out, "sgd"), "--protocol dino", "--protocol mae")
    for protocol in ("dino", "mae"):
        refused(capsys, _linear(dino, cub, out, protocol, "--epochs", "0"), "argument --epochs")
        for option in ("--lr", "--base-lr"):
            refused(capsys, _linear(dino, cub, out, protocol, option, "nan"), f"argument {option}")
        refused(capsys, _linear(dino, cub, out, protocol, "--lr", "1", "--base-lr", "1"), "choose one")
    refused(capsys, _linear(dino, cub, out, "mae", "--warmup-epochs", "-1"), "argument --warmup-epochs")
    # MAE's 10 warm-up epochs on a 2-epoch run: the lr would never leave the warm-up
    short = _linear(dino, cub, out, "mae", "--epochs", "2")
    refused(capsys, short, "--warmup-epochs 10 (MAE's default", "--epochs 2")
    refused(capsys, _linear(dino, cub, out, "mae", "--epochs", "2", "--warmup-epochs", "2"), "not shorter")
    refused(capsys, _linear(dino, cub, out, "mae", "--n-last-blocks", "1"), "are for --protocol dino")
    refused(capsys, _linear(dino, cub, out, "dino", "--warmup-epochs", "1"), "is for --protocol mae")
    refused(capsys, _linear(resnet, cub, out, "sgd", "--base-lr", "1"), "--base-lr is for --protocol")
    assert snapshot(tmp_path) == before and not out.exists()
    assert DEPTH == 2  # the depth the refusals above name


def test_another_recipe_in_the_same_out_is_refused_by_name_even_where_changes_are_allowed(
    files: dict[str, Path], cub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    assert main(_linear(files["mae"], cub, out, "mae", "--epochs", "1", "--warmup-epochs", "0")) == 0
    state = out / "linear_state.pth"
    before = state.read_bytes()
    dino = _linear(files["mae"], cub, out, "dino", "--epochs", "1", "--n-last-blocks", "1", "--overwrite")
    refused(capsys, dino, str(state), "protocol 'linear-mae' -> 'linear-dino'")
    refused(capsys, [*dino, "--allow-config-change"], str(state), "does not fit this probe")
    assert state.read_bytes() == before


def test_dino_on_a_resnet_trains_on_its_pooled_feature_as_eval_linear_does_for_torchvision_archs(
    cub: Path, tmp_path: Path
) -> None:
    resnet = small_checkpoint(tmp_path / "resnet.pth")
    assert main(_linear(resnet, cub, tmp_path / "o", "dino", "--epochs", "1")) == 0
    record = read_record(tmp_path / "o" / "result.json")
    settings = record.protocol["settings"]
    assert record.protocol["name"] == "linear-dino" and record.checkpoint["arch"] == "resnet18_small_stem"
    assert settings["n_last_blocks"] is None and settings["avgpool_patchtokens"] is None
    assert "fc = Identity" in settings["features"] and settings["feature_dim"] == 512
    assert "CosineAnnealingLR" in settings["schedule"] and record.extra["features"]["test"]["dim"] == 512
