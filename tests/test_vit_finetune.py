"""``sslbench finetune`` on ViT checkpoints: the ssl-transfer grid on CLS features and MAE's recipe
(``--config mae``), each checked against an independent computation of what its source does."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay
from vit_sources import (
    ARCH,
    DEPTH,
    HEADS,
    IMAGE,
    LAYOUTS,
    PATCH,
    SOURCES,
    WIDTH,
    backbone_of,
    tiny_vit,
    write_layouts,
)

from sslbench.checkpoints.readers import read_checkpoint
from sslbench.cli import main, parse_command_line
from sslbench.config import load_config, resolve_config_path
from sslbench.data import fixtures
from sslbench.data.base import ImageArray
from sslbench.data.transforms import timm_train_transform
from sslbench.evaluate.finetune import (
    CoreTuningSettings,
    ModelOptions,
    RunSettings,
    build_finetune_model,
    build_optimizer,
    finetune,
)
from sslbench.evaluate.finetune_cli import run_finetune
from sslbench.evaluate.finetune_grid import FinetuneConfig
from sslbench.evaluate.layer_decay import param_groups
from sslbench.models.resnet import build_backbone
from sslbench.tools.records import read_record

SMALL = ["--steps", "2", "--batch-size", "8", "--image-size", str(IMAGE), "--workers", "0", "--device", "cpu"]
MAE_SMALL = ["--config", "mae", "--lr", "1e-3", "--wd", "0.05", "warmup_steps=1"]  # blr x 8 / 256
ONE_POINT = ["--grid-lr", "0.01", "--grid-wd", "0"]
MAE_OPTIONS = ModelOptions(image_size=IMAGE, pool="avg", drop_path=0.1, head_init_std=2e-5)


@pytest.fixture(scope="module")
def vit() -> VisionTransformer:
    return tiny_vit(seed=0)


@pytest.fixture(scope="module")
def files(vit: VisionTransformer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_layouts(vit, tmp_path_factory.mktemp("vit_ft_ckpts"))


@pytest.fixture(scope="module")
def cub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixtures.write_cub(tmp_path_factory.mktemp("cub"), num_classes=4, per_class=6, size=IMAGE).root


def _argv(ckpt: Path, cub: Path, out: Path, *extra: str) -> list[str]:
    return [
        "finetune",
        str(ckpt),
        "--dataset",
        "cub200",
        "--root",
        str(cub),
        "--out",
        str(out),
        *SMALL,
        *extra,
    ]


def _mae_layer(name: str) -> int:
    """MAE's get_layer_id_for_vit, restated on our names: stem 0, blocks.i i+1, the rest DEPTH+1."""
    if m := re.match(r"backbone\.blocks\.(\d+)\.", name):
        return int(m.group(1)) + 1
    stem = ("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.")
    return 0 if name.startswith(stem) else DEPTH + 1


def _mae_decays(name: str, shape: torch.Size) -> bool:
    """MAE: no weight decay on 1-d parameters and on timm's no_weight_decay() (pos_embed, cls_token)."""
    return len(shape) > 1 and name not in ("backbone.pos_embed", "backbone.cls_token")


@pytest.mark.parametrize("source", LAYOUTS)
@pytest.mark.parametrize("config", ["ssl_transfer", "mae"])
def test_finetune_runs_on_every_vit_source_and_leaves_a_record_and_a_readable_best_pth(
    source: str,
    config: str,
    files: dict[str, Path],
    vit: VisionTransformer,
    cub: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "ft"
    # the ssl-transfer grid on one source (a 1-point grid), fixed lr and wd on the others
    extra = MAE_SMALL if config == "mae" else ONE_POINT if source == "dino" else ["--lr", "0.01", "--wd", "0"]
    assert main(_argv(files[source], cub, out, *extra)) == 0
    record = read_record(out / "result.json")
    settings = record.protocol["settings"]
    assert record.checkpoint["arch"] == ARCH and record.checkpoint["format"] == SOURCES[source][1]
    assert set(record.metrics) == {"top1", "top5", "mean_per_class"}
    assert settings["pos_embed"]["checkpoint_tokens"] == (IMAGE // PATCH) ** 2
    assert "pos_embed compared after resizing" in record.extra["backbone_check"]
    stored = torch.load(out / "best.pth", weights_only=True)["model"]
    assert stored["classifier.weight"].shape == (4, WIDTH)
    if config == "mae":
        assert (
            record.protocol["name"] == "finetune-mae-ce" and "main_finetune.py" in record.protocol["source"]
        )
        assert settings["optimizer"]["name"].startswith("AdamW")
        assert settings["optimizer"]["layer_scales"] == pytest.approx([0.65**3, 0.65**2, 0.65, 1.0])
        assert "fc_norm" in settings["feature"] and "Mixup" in settings["loss"] and settings["departures"]
        assert (
            "RandAugment" in settings["train_transform"]
            and "RandomErasing(p=0.25" in settings["train_transform"]
        )
        assert settings["lr_schedule"].startswith("linear warmup from 0 over 1 steps, then cosine")
        assert settings["effective_lr"] == pytest.approx(1e-3 * 8 / 256)
        # the pooled feature never reads the final norm: it leaves best.pth as the checkpoint had it
        assert torch.equal(stored["backbone.norm.weight"], vit.state_dict()["norm.weight"])
        assert stored["fc_norm.weight"].shape == (WIDTH,)
    else:
        assert record.protocol["name"] == "finetune-ssl-transfer-ce"
        assert settings["optimizer"]["name"].startswith("SGD, Nesterov momentum")
        assert (
            settings["feature"] == "CLS token after the final LayerNorm"
            and settings["loss"] == "cross-entropy"
        )
        assert len(record.extra["grid"]) == (1 if source == "dino" else 0) and "fc_norm.weight" not in stored
    assert not torch.equal(
        stored["backbone.blocks.0.attn.qkv.weight"], vit.state_dict()["blocks.0.attn.qkv.weight"]
    )

    capsys.readouterr()
    assert main(["inspect", str(out / "best.pth"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["format"], info["arch"]) == ("sslbench", ARCH)
    knn = [
        "knn",
        str(out / "best.pth"),
        "--dataset",
        "cub200",
        "--root",
        str(cub),
        "--image-size",
        str(IMAGE),
    ]
    assert (
        main([*knn, "--workers", "0", "--knn", "5:0.07", "--primary", "5:0.07", "--out", str(tmp_path / "k")])
        == 0
    )
    assert read_record(tmp_path / "k" / "result.json").checkpoint["arch"] == ARCH


def test_step_zero_backbone_equals_the_file_with_positions_resized_as_timm_does(
    files: dict[str, Path], vit: VisionTransformer, cub: Path, tmp_path: Path
) -> None:
    """At 48 px (a 6 x 6 grid) every run starts from the file's tensors, pos_embed bicubic-resized."""
    reference = backbone_of(vit)
    reference["pos_embed"] = resample_abs_pos_embed(
        reference["pos_embed"], [6, 6], [4, 4], num_prefix_tokens=1, antialias=False
    )
    starts: list[int] = []

    def on_step(step: int, model) -> None:
        if step == 0:
            starts.append(step)
            current = model.backbone.state_dict()
            assert set(current) == set(reference)
            for key, value in reference.items():
                torch.testing.assert_close(current[key], value, rtol=0, atol=1e-6, msg=key)

    argv = _argv(files["mae"], cub, tmp_path / "r48", *MAE_SMALL)
    argv[argv.index("--image-size") + 1] = "48"
    assert run_finetune(parse_command_line(argv), on_step=on_step) == 0
    assert starts == [0]  # the final run (lr and wd given: no grid)


def _timm_avg_pooled_vit(num_classes: int) -> VisionTransformer:
    """timm's own ViT of the tiny shape with MAE's pooling: mean of the patch tokens, then fc_norm."""
    return VisionTransformer(
        img_size=IMAGE,
        patch_size=PATCH,
        embed_dim=WIDTH,
        depth=DEPTH,
        num_heads=HEADS,
        num_classes=num_classes,
        global_pool="avg",
        fc_norm=True,
    )


def test_avg_pool_feature_equals_timms_global_avg_pool_with_fc_norm(files: dict[str, Path]) -> None:
    ckpt = read_checkpoint(files["mae"])
    model = build_finetune_model(ckpt, 4, "ce", CoreTuningSettings(), 0, MAE_OPTIONS).eval()
    with torch.no_grad():
        model.fc_norm.weight.normal_()  # type: ignore[union-attr]
        model.fc_norm.bias.normal_()  # type: ignore[union-attr]
    timm_avg = _timm_avg_pooled_vit(0).eval()
    weights = {k: v for k, v in ckpt.state_dict.items() if not k.startswith("norm.")}
    weights |= {f"fc_norm.{k}": v for k, v in model.fc_norm.state_dict().items()}  # type: ignore[union-attr]
    timm_avg.load_state_dict(weights, strict=True)
    images = torch.randn(3, 3, IMAGE, IMAGE)
    with torch.no_grad():
        torch.testing.assert_close(model.features(images), timm_avg(images), rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in model.backbone.norm.parameters())
    assert model.classifier.weight.std().item() < 1e-4 and not model.classifier.bias.any()


def test_mae_parameter_groups_follow_maes_layer_rule_and_timms_on_the_avg_pooled_vit(
    files: dict[str, Path],
) -> None:
    model = build_finetune_model(read_checkpoint(files["mae"]), 4, "ce", CoreTuningSettings(), 0, MAE_OPTIONS)
    groups = param_groups(model.named_parameters(), 0.05, 0.65, DEPTH)
    ours = {name: (g["lr_scale"], g["weight_decay"]) for g in groups for name in g["names"]}
    shapes = dict((n, p.shape) for n, p in model.named_parameters())
    expected = {
        name: (0.65 ** (DEPTH + 1 - _mae_layer(name)), 0.05 if _mae_decays(name, shape) else 0.0)
        for name, shape in shapes.items()
        if not name.startswith("backbone.norm.")  # frozen: the pooled feature does not use it
    }
    assert set(ours) == set(expected)
    for name in expected:
        assert ours[name] == pytest.approx(expected[name]), name
    assert ours["backbone.blocks.1.attn.qkv.weight"] == pytest.approx((0.65, 0.05))
    assert ours["classifier.weight"] == (1.0, 0.05) and ours["backbone.pos_embed"][1] == 0.0

    # timm's own helper on timm's avg-pooled ViT gives the same scales and decays (head <-> classifier)
    timm_avg = _timm_avg_pooled_vit(4)
    theirs = {}
    for g in param_groups_layer_decay(timm_avg, 0.05, timm_avg.no_weight_decay(), layer_decay=0.65):
        for p in g["params"]:
            name = next(n for n, q in timm_avg.named_parameters() if q is p)
            ours_name = (
                name.replace("head.", "classifier.") if name.startswith(("head.", "fc_norm.")) else name
            )
            ours_name = ours_name if ours_name.startswith(("classifier.", "fc_norm.")) else f"backbone.{name}"
            theirs[ours_name] = (g["lr_scale"], g["weight_decay"])
    assert set(theirs) == set(ours)
    for name in ours:
        assert theirs[name] == pytest.approx(ours[name]), name


def test_one_adamw_step_with_layer_decay_equals_plain_torch_arithmetic(files: dict[str, Path]) -> None:
    model = build_finetune_model(read_checkpoint(files["mae"]), 4, "ce", CoreTuningSettings(), 0, MAE_OPTIONS)
    settings = RunSettings(
        method="ce", lr=0.01, weight_decay=0.05, steps=10, optimizer="adamw", layer_decay=0.65
    )
    optimizer = build_optimizer(model, settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, settings.lr_factor)
    torch.manual_seed(5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters() if p.requires_grad}
    for name, p in model.named_parameters():
        p.grad = grads.get(name)
    optimizer.step()
    scheduler.step()
    b1, b2, eps = 0.9, 0.999, 1e-8
    for name, p in model.named_parameters():
        if name not in grads:  # the frozen final norm
            assert torch.equal(p, before[name])
            continue
        lr = 0.01 * 0.65 ** (DEPTH + 1 - _mae_layer(name))
        wd = 0.05 if _mae_decays(name, p.shape) else 0.0
        g = grads[name].double()
        m, v = (1 - b1) * g, (1 - b2) * g * g
        step = (m / (1 - b1)) / ((v / (1 - b2)).sqrt() + eps)
        expected = before[name].double() * (1 - lr * wd) - lr * step
        torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-7, msg=name)


def test_lr_at_each_step_is_maes_warmup_then_half_cycle_cosine_per_iteration() -> None:
    """MAE util/lr_sched.py at epoch = step / steps_per_epoch, times each group's layer scale."""
    config = FinetuneConfig(
        epochs=4,
        batch_size=2,
        lr=0.1,
        weight_decay=0.05,
        optimizer="adamw",
        layer_decay=0.5,
        warmup_epochs=1,
        min_lr=1e-3,
    ).check()
    settings = config.run_settings(0.1, 0.05, num_samples=11, seed=0)  # 5 steps per epoch, 20 steps
    assert (settings.steps, settings.warmup_steps) == (20, 5)

    def mae_lr(
        epoch: float, lr: float = 0.1, min_lr: float = 1e-3, warmup: float = 1, epochs: float = 4
    ) -> float:
        if epoch < warmup:
            return lr * epoch / warmup
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))

    params = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.AdamW(
        [{"params": [params[0]], "lr": 0.1 * 0.25}, {"params": [params[1]], "lr": 0.1}], lr=0.1
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, settings.lr_factor)
    for step in range(20):
        want = mae_lr(step / 5)
        assert 0.1 * settings.lr_factor(step) == pytest.approx(want, rel=1e-12, abs=1e-15)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
            [0.25 * want, want], rel=1e-12, abs=1e-15
        )
        optimizer.step()
        scheduler.step()
    assert settings.lr_factor(0) == 0.0


def _mae_data() -> ImageArray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 40, 40, 3), dtype=np.uint8)
    transform = timm_train_transform(IMAGE, (0.08, 1.0), "bicubic", "rand-m9-mstd0.5-inc1", 0.25)
    return ImageArray("tiny", "train", ["a", "b", "c"], images, [i % 3 for i in range(10)], transform)


def test_interrupted_mae_run_resumes_to_the_same_weights_as_an_uninterrupted_one(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """Drop path, Mixup / CutMix, RandAugment, RandomErasing and AdamW's moments all come back."""
    ckpt = read_checkpoint(files["mae"])
    settings = RunSettings(
        method="ce",
        lr=1e-3,
        weight_decay=0.05,
        steps=6,
        batch_size=4,
        save_every=2,
        seed=3,
        optimizer="adamw",
        layer_decay=0.65,
        warmup_steps=2,
        min_lr=1e-6,
        label_smoothing=0.1,
        mixup=0.8,
        cutmix=1.0,
    )
    cpu = torch.device("cpu")

    def model():
        return build_finetune_model(ckpt, 3, "ce", CoreTuningSettings(), 0, MAE_OPTIONS)

    straight = finetune(model(), _mae_data(), settings, cpu, progress=False).model.state_dict()
    again = finetune(model(), _mae_data(), settings, cpu, progress=False).model.state_dict()
    assert all(torch.equal(again[k], straight[k]) for k in straight), "two uninterrupted runs differ"

    state = tmp_path / "state.pth"

    def kill_at_step_3(step: int, _model) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(model(), _mae_data(), settings, cpu, state, on_step=kill_at_step_3, progress=False)
    saved = torch.load(state, weights_only=True)
    assert saved["step"] == 2 and all("exp_avg_sq" in s for s in saved["optimizer"]["state"].values())
    assert sorted({g["lr_scale"] for g in saved["optimizer"]["param_groups"]}) == pytest.approx(
        [0.65**3, 0.65**2, 0.65, 1.0]
    )
    resumed = finetune(model(), _mae_data(), settings, cpu, state, progress=False)
    assert resumed.resumed_from == 2
    weights = resumed.model.state_dict()
    assert all(torch.equal(weights[k], straight[k]) for k in straight), "resumed weights differ"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["layer_decay=0"], r"layer_decay 0\.0 must be finite and in \(0, 1\]"),
        (["layer_decay=-1"], r"layer_decay -1\.0 must be"),
        (["layer_decay=nan"], r"layer_decay nan must be"),
        (["drop_path=1.5"], r"drop_path 1\.5 must be finite and in \[0, 1\)"),
        (["optimizer=adam2"], r"optimizer 'adam2' is not one of sgd, adamw"),
        (
            ["warmup_steps=5"],
            r"warmup_steps 5 steps is not shorter than the run \(2 steps on a split of 12\)",
        ),
        (["warmup_steps=0", "warmup_epochs=3"], r"warmup_epochs 3 = 3 steps is not shorter than the run"),
        (["pool=max"], r"pool 'max' is not one of token, avg"),
        (["mixup=-0.5"], r"mixup -0\.5 must be"),
        (["randaug=rand-x9"], r"randaug 'rand-x9' is not a timm RandAugment string"),
        (["min_lr=1"], r"min_lr 1 is above the lr 3\.125e-05"),
    ],
)
def test_bad_recipe_values_exit_2_with_one_line_naming_the_key_and_write_nothing(
    overrides: list[str], message: str, files: dict[str, Path], cub: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "bad"
    assert main([*_argv(files["mae"], cub, out, *MAE_SMALL), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not out.exists()


def test_a_resnet_with_the_mae_config_is_refused_in_one_line(cub: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "resnet.pth"
    torch.save(build_backbone("resnet18_small_stem").state_dict(), path)
    out = tmp_path / "r"
    argv = _argv(path, cub, out, *MAE_SMALL)
    argv[argv.index("--image-size") + 1] = "16"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "layer_decay 0.65, drop_path 0.1, pool avg need a ViT backbone" in err and not out.exists()


def test_shipped_mae_config_states_maes_vit_b_values() -> None:
    mae = load_config(FinetuneConfig, resolve_config_path("mae", "finetune")).check()
    assert (mae.name, mae.optimizer, mae.pool, mae.epochs, mae.batch_size) == (
        "mae",
        "adamw",
        "avg",
        100,
        1024,
    )
    assert (mae.lr, mae.lr_reference_batch, mae.weight_decay, mae.layer_decay) == (5e-4, 256, 0.05, 0.65)
    assert (mae.drop_path, mae.warmup_epochs, mae.min_lr, mae.head_init_std) == (0.1, 5, 1e-6, 2e-5)
    assert (mae.label_smoothing, mae.mixup, mae.cutmix, mae.reprob) == (0.1, 0.8, 1.0, 0.25)
    assert mae.randaug == "rand-m9-mstd0.5-inc1" and mae.test_resize == "crop_ratio"
    run = mae.run_settings(mae.lr, mae.weight_decay, num_samples=5994, seed=0)  # CUB train+val
    assert (run.lr, run.steps, run.warmup_steps) == (pytest.approx(2e-3), 500, 25)  # 5 steps per epoch


def test_torchrun_ddp_runs_the_mae_recipe_on_two_ranks(
    files: dict[str, Path], cub: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "sslbench", *_argv(files["mae"], cub, out, *MAE_SMALL)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    record = read_record(out / "result.json")
    assert record.protocol["settings"]["world_size"] == 2 and record.protocol["name"] == "finetune-mae-ce"


def test_coretuning_runs_on_a_vit_over_its_cls_feature(
    files: dict[str, Path], cub: Path, tmp_path: Path
) -> None:
    out = tmp_path / "core"
    assert main(_argv(files["dino"], cub, out, "--method", "coretuning", "--lr", "0.01", "--wd", "0")) == 0
    record = read_record(out / "result.json")
    assert record.protocol["name"] == "finetune-ssl-transfer-coretuning"
    assert record.extra["history"][-1]["contrastive"] > 0
    stored = torch.load(out / "best.pth", weights_only=True)["model"]
    assert stored["contrast_head.output.weight"].shape == (256, WIDTH) and "classifier.bias" not in stored


@pytest.mark.gpu
def test_cuda_runs_the_mae_recipe_with_bf16_autocast(
    files: dict[str, Path], cub: Path, tmp_path: Path
) -> None:
    out = tmp_path / "gpu"
    argv = _argv(files["mae"], cub, out, *MAE_SMALL)
    argv[argv.index("--device") + 1] = "cuda"
    assert main(argv) == 0
    settings = read_record(out / "result.json").protocol["settings"]
    assert settings["precision"] == "bf16-autocast" and settings["device"].startswith("cuda")


def test_randaugment_posterize_at_magnitude_10_gives_the_black_image_instead_of_raising() -> None:
    """MAE's rand-m9-mstd0.5-inc1 reaches magnitude 10 (0 bits kept) in ~2% of draws: Pillow 13 raises
    there, Pillow < 13 (MAE's) returned a black image; the transform keeps the old result."""
    from PIL import Image
    from timm.data.auto_augment import RandAugment

    transform = timm_train_transform(IMAGE, (0.08, 1.0), "bicubic", "rand-m9-mstd0.5-inc1", 0.0)
    [augment] = [t for t in transform.transforms if isinstance(t, RandAugment)]  # type: ignore[attr-defined]
    [op] = [op for op in augment.ops if op.name == "PosterizeIncreasing"]
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    image = Image.fromarray(np.random.default_rng(0).integers(1, 256, (IMAGE, IMAGE, 3), dtype=np.uint8))
    assert not np.asarray(op(image)).any()
    op.magnitude = 5  # 2 bits kept: Pillow's own posterize, unchanged
    expected = np.asarray(image) & 0b11000000
    assert np.array_equal(np.asarray(op(image)), expected)
