"""torchvision ``VisionTransformer`` files: detected, renamed to timm's ViT, and evaluated on the same
CLS features torchvision's own forward gives (heads replaced by Identity), at the checkpoint's
resolution and at another one (positions resized as torchvision's ``interpolate_embeddings``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

from sslbench.checkpoints.readers import read_checkpoint
from sslbench.cli import main
from sslbench.data import fixtures
from sslbench.data.registry import build_dataset
from sslbench.data.transforms import eval_transform
from sslbench.models.backbones import build_evaluated_backbone
from sslbench.tools.records import read_record

IMAGE, PATCH, LAYERS, HEADS, WIDTH, MLP = 32, 8, 2, 2, 128, 512
ARCH = f"vit_d{WIDTH}_l{LAYERS}_h{HEADS}_p{PATCH}"
COMMON = ["--batch-size", "16", "--workers", "0", "--device", "cpu"]
LAYER = "encoder.layers.encoder_layer_"


def torchvision_vit(image_size: int = IMAGE) -> VisionTransformer:
    return VisionTransformer(
        image_size=image_size,
        patch_size=PATCH,
        num_layers=LAYERS,
        num_heads=HEADS,
        hidden_dim=WIDTH,
        mlp_dim=MLP,
        num_classes=10,
    )


@pytest.fixture(scope="module")
def model() -> VisionTransformer:
    torch.manual_seed(0)
    vit = torchvision_vit()
    with torch.no_grad():  # LayerNorms start at 1/0 and the class token at 0: make every tensor matter
        for name, p in vit.named_parameters():
            if ".ln" in name or name.startswith(("class_token", "encoder.pos_embedding", "encoder.ln")):
                p.add_(0.3 * torch.randn_like(p))
    return vit.eval()


@pytest.fixture(scope="module")
def path(model: VisionTransformer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tv_vit") / "vit_tiny_torchvision.pth"
    torch.save(model.state_dict(), out)
    return out


@pytest.fixture(scope="module")
def cub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixtures.write_cub(tmp_path_factory.mktemp("cub"), num_classes=4, per_class=6, size=IMAGE).root


def _cls_torchvision(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """torchvision's own forward with the classifier replaced by Identity: the final-norm CLS token."""
    heads, model.heads = model.heads, nn.Identity()
    try:
        with torch.no_grad():
            return model.eval()(images)
    finally:
        model.heads = heads


def _error(argv: list[str], capsys: pytest.CaptureFixture[str], *patterns: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert all(re.search(p, err) for p in patterns), err
    return err


def test_torchvision_vit_is_detected_and_its_heads_are_named_as_dropped(
    path: Path, model: VisionTransformer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["format"], info["arch"], info["dropped"]) == ("torchvision-vit", ARCH, {"heads": 2})
    backbone = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("heads."))
    assert info["parameters"] == backbone
    assert main(["inspect", str(path)]) == 0
    assert re.search(r"dropped\s+heads \(2\)", capsys.readouterr().out)


def test_read_vit_gives_torchvision_own_cls_features(path: Path, model: VisionTransformer) -> None:
    ckpt = read_checkpoint(path)
    images = torch.randn(3, 3, IMAGE, IMAGE)
    with torch.no_grad():
        ours = build_evaluated_backbone(ckpt, IMAGE).eval()(images)
    torch.testing.assert_close(ours, _cls_torchvision(model, images), rtol=0, atol=1e-5)


def test_converted_torchvision_vit_loads_strictly_into_timm(
    path: Path, model: VisionTransformer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "vit.timm.pth"
    assert main(["convert", str(path), "--to", "timm", "--out", str(out)]) == 0
    timm_vit = TimmViT(
        img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=LAYERS, num_heads=HEADS, num_classes=0
    )
    timm_vit.load_state_dict(torch.load(out, weights_only=True), strict=True)
    images = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        theirs = timm_vit.eval()(images)
    torch.testing.assert_close(theirs, _cls_torchvision(model, images), rtol=0, atol=1e-5)


def test_files_with_the_legacy_mlp_names_read_the_same(
    path: Path, model: VisionTransformer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = model.state_dict()
    legacy = {
        re.sub(r"\.mlp\.0\.", ".mlp.linear_1.", re.sub(r"\.mlp\.3\.", ".mlp.linear_2.", k)): v
        for k, v in state.items()
    }
    assert f"{LAYER}1.mlp.linear_2.weight" in legacy
    torchvision_vit().load_state_dict(legacy)  # torchvision itself still reads these names
    old = tmp_path / "legacy.pth"
    torch.save(legacy, old)
    new, renamed = read_checkpoint(path), read_checkpoint(old)
    assert renamed.source_format == "torchvision-vit" and list(renamed.state_dict) == list(new.state_dict)
    assert all(torch.equal(renamed.state_dict[k], v) for k, v in new.state_dict.items())
    both = tmp_path / "both.pth"
    torch.save(state | {f"{LAYER}0.mlp.linear_1.weight": state[f"{LAYER}0.mlp.0.weight"]}, both)
    _error(["inspect", str(both)], capsys, r"linear_1\.weight and another key both name blocks\.0\.mlp\.fc1")


def test_a_missing_or_extra_key_is_named_in_torchvision_names(
    model: VisionTransformer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = dict(model.state_dict())
    del state[f"{LAYER}1.ln_2.weight"]
    state[f"{LAYER}0.self_attention.extra"] = torch.zeros(3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    err = _error(["inspect", str(bad)], capsys, "torchvision-vit", f"does not match {ARCH}")
    assert re.search(rf"missing \(1\): {LAYER}1\.ln_2\.weight \(canonical blocks\.1\.norm2\.weight\)", err)
    assert re.search(rf"unexpected \(1\): {LAYER}0\.self_attention\.extra", err)
    torch.save(model.state_dict() | {f"{LAYER}2.ln_1.weight": torch.ones(WIDTH)}, bad)  # a third layer
    _error(["inspect", str(bad), "--arch", ARCH], capsys, rf"unexpected \(1\): {LAYER}2\.ln_1\.weight")


def test_positions_resize_as_torchvision_interpolate_embeddings(path: Path, model: VisionTransformer) -> None:
    """At 48 px (a 6x6 grid from 4x4) the features equal torchvision's own model built for 48 px and
    loaded through its interpolate_embeddings (bicubic, align_corners=True)."""
    big = torchvision_vit(48)
    big.load_state_dict(interpolate_embeddings(48, PATCH, model.state_dict()))
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ours = build_evaluated_backbone(read_checkpoint(path), 48).eval()(images)
    torch.testing.assert_close(ours, _cls_torchvision(big, images), rtol=0, atol=1e-5)


def _knn_top1(train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, test_y: torch.Tensor) -> float:
    """k=5, T=0.07 cosine kNN with exp(sim/T) votes (DINO eval_knn.py), written out."""
    train, test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    sims, idx = (test @ train.T).topk(5, dim=1)
    votes = torch.zeros(len(test), 4).scatter_add_(1, train_y[idx], (sims / 0.07).exp())
    return 100.0 * (votes.argmax(1) == test_y).float().mean().item()


def test_knn_on_a_torchvision_vit_uses_torchvision_features(
    path: Path, model: VisionTransformer, cub: Path, tmp_path: Path
) -> None:
    out = tmp_path / "knn"
    argv = ["knn", str(path), "--dataset", "cub200", "--root", str(cub), "--image-size", str(IMAGE)]
    assert main([*argv, *COMMON, "--knn", "5:0.07", "--primary", "5:0.07", "--out", str(out)]) == 0
    record = read_record(out / "result.json")
    features = {}
    for split in ("trainval", "test"):
        dataset = build_dataset("cub200", cub, split, eval_transform(IMAGE))
        images = torch.stack([dataset[i][0] for i in range(len(dataset))])
        features[split] = (_cls_torchvision(model, images), torch.tensor(dataset.targets))
    expected = _knn_top1(*features["trainval"], *features["test"])
    assert record.metrics["top1"] == pytest.approx(expected, abs=1e-9)
    assert record.checkpoint["format"] == "torchvision-vit" and record.checkpoint["arch"] == ARCH
    assert "interpolate_embeddings" in record.protocol["settings"]["pos_embed"]["resize"]
