"""Checkpoint readers, format detection, strict matching, writers and the inspect/convert commands."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from checkpoint_sources import EXPECTED_FORMAT, SOURCES, backbone_of, dino, pycontrast, resnet
from torch import nn
from torchvision import models as tvm

from sslbench.checkpoints import FORMATS, read_checkpoint
from sslbench.checkpoints.detectron2_names import from_detectron2, to_detectron2
from sslbench.checkpoints.writers import WRITERS
from sslbench.cli import main
from sslbench.errors import CheckpointError


def save(obj: object, path: Path) -> Path:
    if isinstance(obj, dict) and obj.get("__author__") == "MOCO":
        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path)
    return path


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b) or set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def r18() -> nn.Module:
    return resnet("resnet18", seed=1)


@pytest.mark.parametrize("source", list(SOURCES))
def test_every_format_reads_back_the_original_backbone(source: str, r18: nn.Module, tmp_path: Path) -> None:
    path = save(SOURCES[source](r18), tmp_path / f"{source}.pth")
    ckpt = read_checkpoint(path)
    assert ckpt.source_format == EXPECTED_FORMAT[source]
    assert ckpt.arch == "resnet18"
    assert_same_tensors(ckpt.state_dict, backbone_of(r18))
    assert not any(k.startswith("fc.") for k in ckpt.state_dict)


@pytest.mark.parametrize("source", list(SOURCES))
def test_each_format_is_detected_as_itself_and_no_other(source: str, r18: nn.Module, tmp_path: Path) -> None:
    path = save(SOURCES[source](r18), tmp_path / f"{source}.pth")
    obj = pickle.loads(path.read_bytes()) if source == "detectron2" else torch.load(path, weights_only=False)
    matches = [name for name, fmt in FORMATS.items() if fmt.detect(obj)]
    assert matches == [EXPECTED_FORMAT[source]]


def test_dropped_parts_are_reported(r18: nn.Module, tmp_path: Path) -> None:
    ckpt = read_checkpoint(save(SOURCES["moco_v2"](r18), tmp_path / "m.pth"))
    assert ckpt.dropped == {
        "module.encoder_k": 124,
        "module.encoder_q.fc": 4,
        "module.queue": 1,
        "module.queue_ptr": 1,
    }
    assert set(ckpt.other_entries) == {"epoch", "arch", "optimizer"}


def test_key_picks_pycontrast_ema_and_dino_student(tmp_path: Path) -> None:
    online, ema = resnet("resnet18", seed=2), resnet("resnet18", seed=3)
    path = save(pycontrast(online, ema), tmp_path / "pyc.pth")
    assert_same_tensors(read_checkpoint(path).state_dict, backbone_of(online))
    assert_same_tensors(read_checkpoint(path, key="model_ema").state_dict, backbone_of(ema))
    path = save(dino(online, teacher=ema), tmp_path / "dino.pth")
    assert read_checkpoint(path).key == "teacher"  # DINO's eval scripts default to the teacher
    assert_same_tensors(read_checkpoint(path).state_dict, backbone_of(ema))
    assert_same_tensors(read_checkpoint(path, key="student").state_dict, backbone_of(online))
    with pytest.raises(CheckpointError, match="--key 'model' is not a state dict of format dino"):
        read_checkpoint(path, key="model")


@pytest.mark.parametrize("arch", ["resnet34", "resnet50", "resnet101"])
def test_architectures_are_inferred(arch: str, tmp_path: Path) -> None:
    model = getattr(tvm, arch)()
    ckpt = read_checkpoint(save(SOURCES["moco_v1"](model), tmp_path / "m.pth"))
    assert ckpt.arch == arch
    assert_same_tensors(ckpt.state_dict, backbone_of(model))


def test_small_stem_resnet_is_its_own_architecture(tmp_path: Path) -> None:
    from sslbench.models.resnet import build_backbone

    model = build_backbone("resnet18_small_stem")
    torch.save(model.state_dict(), tmp_path / "s.pth")
    assert read_checkpoint(tmp_path / "s.pth").arch == "resnet18_small_stem"


def test_forced_format_overrides_detection(r18: nn.Module, tmp_path: Path) -> None:
    obj = SOURCES["openmmlab"](r18)
    del obj["meta"]  # no marker left: detection cannot tell Lightning from OpenMMLab
    path = save(obj, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint structure"):
        read_checkpoint(path)
    assert_same_tensors(read_checkpoint(path, fmt="openmmlab").state_dict, backbone_of(r18))


# ---- bad input -------------------------------------------------------------------------------


class Payload:
    """Stands for an arbitrary class: unpickling a real exploit would run its __reduce__."""

    def __init__(self) -> None:
        self.value = 1


def test_arbitrary_pickled_class_is_refused_unless_trusted(r18: nn.Module, tmp_path: Path) -> None:
    obj = SOURCES["moco_v1"](r18) | {"extra": Payload()}
    path = save(obj, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"refused to unpickle .*Payload.*--trust-checkpoint"):
        read_checkpoint(path)
    assert read_checkpoint(path, trust=True).source_format == "moco"


def test_plain_pickle_with_arbitrary_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": Payload()}))
    with pytest.raises(CheckpointError, match=r"refused to unpickle .*Payload"):
        read_checkpoint(path)


def _expect_cli_error(argv: list[str], capsys: pytest.CaptureFixture[str], pattern: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(pattern, err), err
    return err


BAD_INPUTS = {
    "truncated": (
        lambda p, m: p.write_bytes(_torch_bytes(SOURCES["moco_v1"](m))[:5000]),
        "truncated or corrupt",
    ),
    "not_a_checkpoint_pickle": (lambda p, m: p.write_bytes(pickle.dumps([1, 2, 3])), "top level is a list"),
    "unrelated_dict": (lambda p, m: torch.save({"weights": [1, 2]}, p), "unrecognised checkpoint structure"),
    "text_file": (lambda p, m: p.write_text("hello"), "not a checkpoint"),
    "vit_dino_incomplete": (
        lambda p, m: torch.save(_dino_vit(), p),
        r"does not match vit_d64_l1_h1_p16:\n  missing \(13\): patch_embed\.proj\.bias, blocks\.0\.",
    ),
    "missing_layer": (
        lambda p, m: torch.save(_without(backbone_of(m), "layer3.1."), p),
        r"missing \(\d+\): layer3\.1\.",
    ),
}


def _torch_bytes(obj: object) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _dino_vit() -> dict[str, object]:
    vit = {
        "backbone.cls_token": torch.zeros(1, 1, 64),
        "backbone.pos_embed": torch.zeros(1, 5, 64),
        "backbone.patch_embed.proj.weight": torch.zeros(64, 3, 16, 16),
        "backbone.blocks.0.norm1.weight": torch.ones(64),
        "backbone.norm.weight": torch.ones(64),
        "head.mlp.0.weight": torch.zeros(8, 64),
    }
    return {"teacher": vit, "student": {"module." + k: v for k, v in vit.items()}, "epoch": 1}


def _without(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.startswith(prefix)}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_clear_error_and_writes_nothing(
    case: str, r18: nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, pattern = BAD_INPUTS[case]
    src = tmp_path / "bad.pth"
    make(src, r18)
    out = tmp_path / "out.pth"
    _expect_cli_error(["convert", str(src), "--to", "torchvision", "--out", str(out)], capsys, pattern)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [src]  # no temporary file left behind either


def test_resnet50_read_as_resnet18_lists_the_mismatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save(SOURCES["moco_v1"](tvm.resnet50()), tmp_path / "r50.pth")
    err = _expect_cli_error(["inspect", str(path), "--arch", "resnet18"], capsys, "does not match resnet18")
    assert "look like resnet50" in err
    assert re.search(r"unexpected \(\d+\): layer1\.0\.bn3", err)
    assert re.search(r"mis-shaped \(\d+\): layer1\.0\.conv1\.weight: checkpoint \(64, 64, 1, 1\)", err)


# ---- writers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", [w for w in WRITERS if w != "timm"])  # timm (ViT): tests/test_vit.py
def test_convert_round_trip_is_bit_exact(writer: str, r18: nn.Module, tmp_path: Path) -> None:
    src = save(SOURCES["moco_v2"](r18), tmp_path / "moco.pth")
    out = tmp_path / f"out.{writer}"
    assert main(["convert", str(src), "--to", writer, "--out", str(out)]) == 0
    again = read_checkpoint(out)
    assert again.arch == "resnet18"
    assert_same_tensors(again.state_dict, backbone_of(r18))


def test_torchvision_output_loads_strictly_into_torchvision(r18: nn.Module, tmp_path: Path) -> None:
    src = save(SOURCES["dino"](r18), tmp_path / "dino.pth")
    out = tmp_path / "tv.pth"
    assert main(["convert", str(src), "--to", "torchvision", "--out", str(out)]) == 0
    model = tvm.resnet18()
    model.fc = nn.Identity()
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)


def _expected_detectron2_keys(depths: tuple[int, ...], convs: int) -> set[str]:
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"stem.conv1.weight"} | {f"stem.conv1.norm.{p}" for p in bn}
    for stage, blocks in enumerate(depths, start=2):
        for b in range(blocks):
            for c in range(1, convs + 1):
                keys.add(f"res{stage}.{b}.conv{c}.weight")
                keys |= {f"res{stage}.{b}.conv{c}.norm.{p}" for p in bn}
            if b == 0:
                keys.add(f"res{stage}.0.shortcut.weight")
                keys |= {f"res{stage}.0.shortcut.norm.{p}" for p in bn}
    return keys


def test_detectron2_export_follows_the_renaming_rules_for_resnet50(tmp_path: Path) -> None:
    model = tvm.resnet50()
    src = save(SOURCES["moco_v1"](model), tmp_path / "m.pth")
    out = tmp_path / "d2.pkl"
    assert main(["convert", str(src), "--to", "detectron2", "--out", str(out)]) == 0
    payload = pickle.loads(out.read_bytes())
    assert payload["matching_heuristics"] is True
    exported = payload["model"]
    assert set(exported) == _expected_detectron2_keys((3, 4, 6, 3), convs=3)
    source = backbone_of(model)
    assert exported["res4.5.conv3.norm.running_var"].shape == tuple(source["layer3.5.bn3.running_var"].shape)
    assert exported["stem.conv1.weight"].shape == (64, 3, 7, 7)
    for key, value in source.items():
        assert torch.equal(torch.from_numpy(exported[to_detectron2(key)]), value), key
        assert from_detectron2(to_detectron2(key)) == key


def test_inspect_names_the_format(r18: nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save(SOURCES["lightning"](r18), tmp_path / "solo.ckpt")
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "lightning" and info["arch"] == "resnet18"
    assert info["parameters"] == sum(p.numel() for n, p in r18.named_parameters() if not n.startswith("fc."))
    assert info["dropped"]["momentum_backbone"] == 120
