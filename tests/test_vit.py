"""ViT checkpoints: every source's layout read into timm's ViT, converted, and evaluated on its
final-norm CLS token by ``inspect``, ``convert``, ``knn`` and ``linear --protocol lbfgs``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from vit_sources import ARCH, DEPTH, IMAGE, PATCH, SOURCES, WIDTH, backbone_of, tiny_vit

from sslbench.checkpoints.readers import read_checkpoint
from sslbench.cli import main
from sslbench.data import fixtures
from sslbench.data.registry import build_dataset
from sslbench.data.transforms import eval_transform
from sslbench.models.vit import resize_pos_embed
from sslbench.models.vit_archs import default_heads, parse_vit_arch
from sslbench.tools.records import read_record

COMMON = ["--image-size", str(IMAGE), "--batch-size", "16", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def vit() -> VisionTransformer:
    return tiny_vit(seed=0)


@pytest.fixture(scope="module")
def files(vit: VisionTransformer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("vit_ckpts")
    paths = {}
    for name, (build, _, _) in SOURCES.items():
        paths[name] = folder / f"{name}.pth"
        torch.save(build(vit), paths[name])
    return paths


@pytest.fixture(scope="module")
def cub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixtures.write_cub(tmp_path_factory.mktemp("cub"), num_classes=4, per_class=6, size=IMAGE).root


def _error(argv: list[str], capsys: pytest.CaptureFixture[str], pattern: str, one_line: bool = True) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and (len(err.strip().splitlines()) == 1 or not one_line), err
    assert re.search(pattern, err), err
    return err


@pytest.mark.parametrize("source", list(SOURCES))
def test_each_source_layout_is_detected_and_read_to_the_timm_backbone(
    source: str, files: dict[str, Path], vit: VisionTransformer, capsys: pytest.CaptureFixture[str]
) -> None:
    _, fmt, dropped = SOURCES[source]
    assert main(["inspect", str(files[source]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["format"], info["arch"], set(info["dropped"])) == (fmt, ARCH, dropped)
    ckpt = read_checkpoint(files[source])
    expected = backbone_of(vit)
    assert list(ckpt.state_dict) == list(expected)
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in expected.items())
    assert info["parameters"] == sum(p.numel() for p in vit.parameters())


def test_dino_student_is_read_with_key(files: dict[str, Path], vit: VisionTransformer) -> None:
    ckpt = read_checkpoint(files["dino"], key="student")
    assert ckpt.key == "student" and ckpt.dropped == {"module.head": 8}
    assert torch.equal(
        ckpt.state_dict["blocks.1.mlp.fc2.weight"], vit.state_dict()["blocks.1.mlp.fc2.weight"]
    )


@pytest.mark.parametrize("to", ["timm", "safetensors"])
def test_converted_vit_loads_strictly_into_timm_and_gives_the_same_output(
    to: str, files: dict[str, Path], vit: VisionTransformer, tmp_path: Path
) -> None:
    out = tmp_path / f"vit.{to}"
    assert main(["convert", str(files["mae"]), "--to", to, "--out", str(out)]) == 0
    if to == "timm":
        state = torch.load(out, weights_only=True)
    else:
        from safetensors.torch import load_file

        state = load_file(out)
    model = VisionTransformer(
        img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=2, num_classes=0
    )
    model.load_state_dict(state, strict=True)
    images = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), vit.eval()(images), rtol=0, atol=0)
    again = read_checkpoint(out)  # the written file is itself a timm file sslbench reads back
    assert again.source_format == "timm" and again.arch == ARCH


def test_converting_a_vit_to_a_resnet_format_is_refused(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for to in ("torchvision", "detectron2"):
        out = tmp_path / f"x.{to}"
        _error(
            ["convert", str(files["timm"]), "--to", to, "--out", str(out)], capsys, f"--to {to} writes ResNet"
        )
        assert not out.exists()


def test_heads_follow_the_standard_sizes_and_moco_v3_vit_small() -> None:
    assert [default_heads(w) for w in (192, 384, 768, 1024, 1280)] == [3, 6, 12, 16, 16]
    assert default_heads(384, "mocov3") == 12 and default_heads(384, "dino") == 6
    assert default_heads(128) == 2 and default_heads(48) is None
    assert parse_vit_arch("vit_small_patch16").heads == 6
    assert parse_vit_arch("vit_d384_l12_h6_p16").name == "vit_small_patch16"


def test_a_width_without_a_heads_rule_asks_for_arch_and_arch_sets_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "w48.pth"
    torch.save(backbone_of(tiny_vit(width=48, heads=4)), path)
    _error(["inspect", str(path)], capsys, r"--arch vit_d48_l2_h<HEADS>_p8")
    assert main(["inspect", str(path), "--arch", "vit_d48_l2_h4_p8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["arch"] == "vit_d48_l2_h4_p8"
    _error(
        ["inspect", str(path), "--arch", "vit_d48_l3_h4_p8"], capsys, r"missing \(12\): blocks\.2\.", False
    )
    for bad in ("vit_d48_l2_h5_p8", "vit_d0_l2_h1_p8", "vit_huge"):
        with pytest.raises(SystemExit):
            main(["inspect", str(path), "--arch", bad])


def test_size_resize_equals_timm_bicubic_and_dino_resize_keeps_the_class_token() -> None:
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 4 * 4, 8)
    assert resize_pos_embed(pos, 4, "dino") is pos
    ours = resize_pos_embed(pos, 7, "size")
    theirs = resample_abs_pos_embed(pos, [7, 7], [4, 4], num_prefix_tokens=1, antialias=False)
    torch.testing.assert_close(ours, theirs)
    dino = resize_pos_embed(pos, 7, "dino")
    assert dino.shape == (1, 50, 8) and torch.equal(dino[:, 0], pos[:, 0])
    # DINO samples with scale (7 + 0.1) / 4, not 7 / 4: the same grid shape, other values
    grid = pos[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=7.1 / 4, mode="bicubic", align_corners=False)
    torch.testing.assert_close(dino[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 49, 8))
    assert not torch.allclose(dino, ours)


def _dino_knn_classifier(train, train_y, test, test_y, k, t, num_classes) -> float:
    """DINO eval_knn.py's knn_classifier, written out: cosine similarity, top-k, exp(s/T) votes."""
    train, test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    sims, idx = (test @ train.T).topk(k, dim=1)
    one_hot = torch.zeros(len(test), k, num_classes).scatter_(2, train_y[idx].unsqueeze(-1), 1)
    probs = (one_hot * (sims / t).exp().unsqueeze(-1)).sum(1)
    return 100.0 * (probs.argmax(1) == test_y).float().mean().item()


def _cls_features(vit: VisionTransformer, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = build_dataset("cub200", root, split, eval_transform(IMAGE))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        tokens = vit.eval().forward_features(images)  # (N, 1 + patches, D), after the final norm
    return tokens[:, 0], torch.tensor(dataset.targets)


def test_knn_on_a_vit_equals_dino_knn_classifier_on_cls_features(
    files: dict[str, Path], vit: VisionTransformer, cub: Path, tmp_path: Path
) -> None:
    out = tmp_path / "knn"
    argv = ["knn", str(files["dino"]), "--dataset", "cub200", "--root", str(cub), *COMMON]
    assert main([*argv, "--knn", "5:0.07", "10:0.1", "--primary", "5:0.07", "--out", str(out)]) == 0
    record = read_record(out / "result.json")
    train, train_y = _cls_features(vit, cub, "trainval")
    test, test_y = _cls_features(vit, cub, "test")
    for row in record.extra["knn"]:
        expected = _dino_knn_classifier(train, train_y, test, test_y, row["k"], row["T"], 4)
        assert row["top1"] == pytest.approx(expected, abs=1e-9)
    settings = record.protocol["settings"]
    assert record.protocol["name"] == "knn" and settings["feature"] == "cls"
    assert "CLS token after the final LayerNorm" in settings["features"]
    assert record.checkpoint["arch"] == ARCH and record.extra["features"]["test"]["dim"] == WIDTH


def test_linear_lbfgs_on_a_vit_records_cls_features(
    files: dict[str, Path], cub: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lin"
    argv = ["linear", str(files["mocov3"]), "--protocol", "lbfgs", "--dataset", "cub200", "--root", str(cub)]
    assert main([*argv, *COMMON, "--c-grid-size", "3", "--max-iter", "30", "--out", str(out)]) == 0
    record = read_record(out / "result.json")
    assert record.protocol["name"] == "linear-lbfgs" and record.protocol["settings"]["feature"] == "cls"
    assert record.extra["features"]["trainval"]["dim"] == WIDTH and 0 <= record.metrics["top1"] <= 100


def test_knn_at_another_resolution_resizes_positions_as_dino_does(
    files: dict[str, Path], cub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "knn48"
    argv = ["knn", str(files["dino"]), "--dataset", "cub200", "--root", str(cub), *COMMON, "--knn", "5:0.07"]
    assert main([*argv, "--primary", "5:0.07", "--image-size", "48", "--out", str(out)]) == 0
    settings = read_record(out / "result.json").protocol["settings"]
    assert settings["pos_embed"]["checkpoint_tokens"] == 16 and "DINO" in settings["pos_embed"]["resize"]
    capsys.readouterr()
    _error(
        [*argv, "--primary", "5:0.07", "--image-size", "36", "--out", str(tmp_path / "k36")],
        capsys,
        "patch size 8",
    )
    assert not (tmp_path / "k36").exists()


def test_vit_commands_outside_the_slice_say_so_in_one_line(
    files: dict[str, Path], cub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = str(files["dino"])
    _error(
        ["detect", ckpt, "--task", "voc", "--out", str(tmp_path / "d")], capsys, r"ViTDet\) is not supported"
    )
    argv = ["linear", ckpt, "--protocol", "sgd", "--dataset", "cub200", "--root", str(cub), *COMMON]
    _error([*argv, "--out", str(tmp_path / "s")], capsys, "use --protocol dino .* or --protocol mae")
    assert not any((tmp_path / name).exists() for name in ("d", "s"))  # finetune: test_vit_finetune.py


def test_feature_cache_never_returns_features_of_another_reading(
    files: dict[str, Path], cub: Path, tmp_path: Path
) -> None:
    """Same file, other heads (--arch) or other entry (--key): features are computed, not reused."""
    base = ["knn", str(files["dino"]), "--dataset", "cub200", "--root", str(cub), *COMMON]
    base += ["--knn", "5:0.07", "--primary", "5:0.07", "--cache-dir", str(tmp_path / "cache")]
    caches = []
    for i, extra in enumerate(([], [], ["--arch", "vit_d128_l2_h4_p8"], ["--key", "student"])):
        assert main([*base, *extra, "--out", str(tmp_path / f"r{i}")]) == 0
        caches.append(read_record(tmp_path / f"r{i}" / "result.json").extra["features"]["test"]["cache"])
    assert caches == ["computed", "hit", "computed", "computed"]
