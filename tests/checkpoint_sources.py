"""Checkpoints written the way each real source writes them, from a torchvision ResNet.

Each builder returns the object its source passes to ``torch.save`` (nesting, prefixes, momentum
encoders, queues, heads, optimizer state, bookkeeping entries), so the readers are tested against
the real layouts rather than against our own expectations of them.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision import models as tvm

StateDict = dict[str, torch.Tensor]


def resnet(arch: str = "resnet18", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = getattr(tvm, arch)()
    for m in model.modules():  # make BN statistics non-trivial so equality checks mean something
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(seed + 7)
    return model


def backbone_of(model: nn.Module) -> StateDict:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


def _with_prefix(prefix: str, sd: StateDict) -> StateDict:
    return {prefix + k: v for k, v in sd.items()}


def _optimizer_state(model: nn.Module) -> dict[str, Any]:
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    return opt.state_dict()


def _mlp(dims: tuple[int, ...], bn: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(b), nn.ReLU()] if bn else [nn.ReLU()]
    return nn.Sequential(*layers)


def _dim(model: nn.Module) -> int:
    return model.fc.in_features


def moco_v1(model: nn.Module) -> dict[str, Any]:
    """facebookresearch/moco main_moco.py: encoder_q/encoder_k are ResNets whose fc is Linear(D, 128)."""
    q = backbone_of(model) | {"fc.weight": torch.randn(128, _dim(model)), "fc.bias": torch.zeros(128)}
    state = _with_prefix("module.encoder_q.", q) | _with_prefix("module.encoder_k.", q)
    state |= {"module.queue": torch.randn(128, 4096), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": _optimizer_state(model)}


def moco_v2(model: nn.Module) -> dict[str, Any]:
    """MoCo v2 (--mlp): fc is Sequential(Linear(D, D), ReLU, Linear(D, 128)) -> fc.0.*, fc.2.*."""
    head = {
        f"fc.{i}.{p}": v
        for i, lin in ((0, nn.Linear(_dim(model), _dim(model))), (2, nn.Linear(_dim(model), 128)))
        for p, v in lin.state_dict().items()
    }
    q = backbone_of(model) | head
    state = _with_prefix("module.encoder_q.", q) | _with_prefix("module.encoder_k.", q)
    state |= {"module.queue": torch.randn(128, 4096), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": _optimizer_state(model)}


def mocov3(model: nn.Module) -> dict[str, Any]:
    """moco-v3 (ResNet): base_encoder with a BN projector as fc, momentum_encoder, predictor."""
    proj = {"fc." + k: v for k, v in _mlp((_dim(model), 64, 32), bn=True).state_dict().items()}
    pred = {"predictor." + k: v for k, v in _mlp((32, 64, 32), bn=True).state_dict().items()}
    enc = backbone_of(model) | proj
    state = _with_prefix("module.base_encoder.", enc) | _with_prefix("module.momentum_encoder.", enc)
    state |= _with_prefix("module.", pred)
    return {
        "epoch": 100,
        "arch": "resnet50",
        "state_dict": state,
        "optimizer": _optimizer_state(model),
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000},
    }


def pycontrast(model: nn.Module, ema: nn.Module | None = None) -> dict[str, Any]:
    """PyContrast / FT repo: RGBSingleHead(encoder, head) under DDP in 'model', EMA copy in 'model_ema'."""
    ema = ema or model
    head = {
        "head.0.weight": torch.randn(_dim(model), _dim(model)),
        "head.0.bias": torch.zeros(_dim(model)),
        "head.2.weight": torch.randn(128, _dim(model)),
        "head.2.bias": torch.zeros(128),
    }
    opt = argparse.Namespace(method="MoCov2", arch="resnet50", mixnorm=True, mixnorm_target="posneg")
    return {
        "opt": opt,
        "model": _with_prefix("module.encoder.", backbone_of(model)) | _with_prefix("module.", head),
        "contrast": {"memory": torch.randn(16384, 128), "index": torch.zeros(1, dtype=torch.long)},
        "optimizer": _optimizer_state(model),
        "epoch": 200,
        "model_ema": _with_prefix("encoder.", backbone_of(ema)) | head,
    }


def dino(student: nn.Module, teacher: nn.Module | None = None) -> dict[str, Any]:
    """facebookresearch/dino main_dino.py with a ResNet: MultiCropWrapper(backbone, DINOHead)."""
    teacher = teacher or student
    head = {
        "head.mlp.0.weight": torch.randn(64, _dim(student)),
        "head.mlp.0.bias": torch.zeros(64),
        "head.last_layer.weight_g": torch.ones(256, 1),
        "head.last_layer.weight_v": torch.randn(256, 64),
    }
    return {
        "student": _with_prefix("module.backbone.", backbone_of(student)) | _with_prefix("module.", head),
        "teacher": _with_prefix("backbone.", backbone_of(teacher)) | head,
        "optimizer": _optimizer_state(student),
        "epoch": 100,
        "args": argparse.Namespace(arch="resnet50", out_dim=65536, momentum_teacher=0.996),
        "dino_loss": {"center": torch.zeros(1, 256)},
    }


def lightning(model: nn.Module) -> dict[str, Any]:
    """solo-learn MoCo v2+ (a LightningModule): backbone, projector, momentum copies, queue."""
    proj = {"projector." + k: v for k, v in _mlp((_dim(model), 64, 32)).state_dict().items()}
    state = _with_prefix("backbone.", backbone_of(model)) | proj
    state |= _with_prefix("momentum_backbone.", backbone_of(model))
    state |= {"momentum_projector." + k.removeprefix("projector."): v for k, v in proj.items()}
    state |= {"queue": torch.randn(2, 32, 4096), "queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {
        "epoch": 399,
        "global_step": 78000,
        "pytorch-lightning_version": "2.1.3",
        "state_dict": state,
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 399}}}},
        "callbacks": {},
        "optimizer_states": [_optimizer_state(model)],
        "lr_schedulers": [{"last_epoch": 399}],
        "hparams_name": "kwargs",
        "hyper_parameters": {"method": "mocov2plus", "backbone": {"name": "resnet18"}},
    }


def openmmlab(model: nn.Module) -> dict[str, Any]:
    """mmselfsup 1.x MoCo v2: backbone, neck, momentum encoder, queue; 'meta' and 'message_hub'."""
    neck = {
        "neck.mlp.0.weight": torch.randn(64, _dim(model)),
        "neck.mlp.0.bias": torch.zeros(64),
        "neck.mlp.2.weight": torch.randn(32, 64),
        "neck.mlp.2.bias": torch.zeros(32),
    }
    state = _with_prefix("backbone.", backbone_of(model)) | neck
    state |= _with_prefix("encoder_k.module.0.", backbone_of(model))
    state |= {"queue": torch.randn(32, 4096), "queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {
        "meta": {"mmengine_version": "0.7.3", "mmselfsup_version": "1.0.0", "epoch": 200, "iter": 250000},
        "state_dict": state,
        "message_hub": {"log_scalars": {}, "runtime_info": {"epoch": 200}},
        "optimizer": _optimizer_state(model),
    }


def torchvision_plain(model: nn.Module) -> StateDict:
    """torchvision: ``torch.save(model.state_dict())`` (fc included)."""
    return dict(model.state_dict())


def sslbench_own(model: nn.Module) -> dict[str, Any]:
    """Our pretraining checkpoint (format 'sslbench', version 1)."""
    bb = backbone_of(model)
    state = _with_prefix("backbone_q.", bb) | _with_prefix("backbone_k.", bb)
    state |= {
        "projector_q.0.weight": torch.randn(32, _dim(model)),
        "queue": torch.randn(32, 256),
        "queue_ptr": torch.zeros(1, dtype=torch.long),
    }
    return {
        "format": "sslbench",
        "format_version": 1,
        "arch": "resnet18",
        "backbone_prefix": "backbone_q.",
        "model": state,
        "optimizer": _optimizer_state(model),
        "epoch": 3,
        "config": {"moco": {"dim": 32, "queue_size": 256}},
    }


def detectron2_moco(model: nn.Module) -> dict[str, Any]:
    """MoCo's detection/convert-pretrain-to-detectron2.py output, built by its string rules."""
    out = {}
    for k, v in backbone_of(model).items():
        name = k if "layer" in k else "stem." + k
        for t in (1, 2, 3, 4):
            name = name.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            name = name.replace(f"bn{t}", f"conv{t}.norm")
        name = name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[name] = v.numpy()
    return {"model": out, "__author__": "MOCO", "matching_heuristics": True}


SOURCES: dict[str, Callable[[nn.Module], Any]] = {
    "sslbench": sslbench_own,
    "moco_v1": moco_v1,
    "moco_v2": moco_v2,
    "mocov3": mocov3,
    "pycontrast": pycontrast,
    "dino": dino,
    "lightning": lightning,
    "openmmlab": openmmlab,
    "torchvision": torchvision_plain,
    "detectron2": detectron2_moco,
}

# The format name each source must be detected as.
EXPECTED_FORMAT = {name: name for name in SOURCES} | {"moco_v1": "moco", "moco_v2": "moco"}
