"""MoCo (He et al., CVPR 2020; v2: Chen et al. 2020) with Feature Transformation as a plug-in on the logits.

Follows facebookresearch/moco ``moco/builder.py``: a query encoder, a momentum key encoder
(``m = 0.999``) updated parameter-wise before the keys are computed, a queue of K L2-normalised keys
with a pointer, InfoNCE logits with the positive at index 0, and shuffle BN for the keys.

Differences in layout, not in the method: each encoder is a torchvision backbone plus a projector
(``backbone_q``/``projector_q``, ``backbone_k``/``projector_k``), so ``backbone_q.*`` holds exactly the
canonical keys our checkpoint reader exports; the queue is stored ``(K, D)``, one key per row (the FT
reference's layout), so enqueueing writes contiguous rows and FT's permutation gathers rows.

Shuffle BN:
* under DDP (several ranks) as in MoCo: the key batch is gathered, shuffled across ranks, encoded,
  and unshuffled (``all_gather``), so a key's BN statistics come from other ranks' query images;
* on one device (one GPU, or the CPU): :class:`SplitBatchNorm2d` computes BN statistics per
  sub-batch, as MoCo's single-GPU CIFAR demo does (``bn_splits=8``). Sample ``n`` of a batch belongs
  to sub-batch ``n mod bn_splits``. Both encoders use it; the key batch is shuffled before the key
  encoder and unshuffled after, so a key's sub-batch is a random set of images, unrelated to the
  sub-batch its query was normalised with. Running statistics are the mean over the sub-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from sslbench.models.archs import feature_dim
from sslbench.models.resnet import build_backbone
from sslbench.pretrain.config import FeatureTransformConfig
from sslbench.pretrain.feature_transform import (
    FTDraws,
    contrast_scores,
    feature_transform_scores,
    sample_draws,
)
from sslbench.pretrain.scores import batch_score_stats, collapse_metric
from sslbench.runtime.collectives import gather_equal
from sslbench.runtime.process import process_world


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are computed per sub-batch of ``splits`` samples.

    Sample ``n`` belongs to sub-batch ``n mod splits``; in eval mode (or with ``splits=1``) it is
    plain BatchNorm2d. Parameters and buffers are BatchNorm2d's, so state dict keys do not change.
    """

    def __init__(self, num_features: int, splits: int, **kwargs: object) -> None:
        super().__init__(num_features, **kwargs)  # type: ignore[arg-type]
        self.splits = splits

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.splits == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % self.splits:
            raise ValueError(f"batch of {n} is not divisible into {self.splits} BN sub-batches")
        s = self.splits
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        running_mean, running_var = self.running_mean.repeat(s), self.running_var.repeat(s)
        y = F.batch_norm(
            x.reshape(n // s, s * c, h, w),  # channel j*c + i of row r is channel i of sample r*s + j
            running_mean,
            running_var,
            self.weight.repeat(s),
            self.bias.repeat(s),
            training=True,
            momentum=factor,
            eps=self.eps,
        )
        with torch.no_grad():
            self.running_mean.copy_(running_mean.view(s, c).mean(dim=0))
            self.running_var.copy_(running_var.view(s, c).mean(dim=0))
        return y.reshape(n, c, h, w)


def use_split_batch_norm(module: nn.Module, splits: int) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by a :class:`SplitBatchNorm2d` with the same state."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            split = SplitBatchNorm2d(
                child.num_features, splits, eps=child.eps, momentum=child.momentum, affine=child.affine
            )
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            use_split_batch_norm(child, splits)
    return module


def projector(in_dim: int, dim: int, mlp: bool) -> nn.Module:
    """MoCo v1's linear head ``in_dim -> dim`` or v2's MLP ``in_dim -> in_dim -> ReLU -> dim``."""
    if not mlp:
        return nn.Linear(in_dim, dim)
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, dim))


def _distributed() -> bool:
    return process_world() > 1


@dataclass
class MoCoOutput:
    logits: Tensor  # (B, 1+N): scores / T, positive at index 0
    stats_before_ft: Tensor  # (4,) pos_mean, pos_var, neg_mean, neg_var of the plain MoCo scores
    stats_after_ft: Tensor  # (4,) the same on the scores trained on (equal to the above with FT off)
    output_std: Tensor  # () collapse metric of the query projector output (scores.collapse_metric)
    feature_std: Tensor | None = None  # () the same of the query backbone features, when asked for


class MoCo(nn.Module):
    """MoCo v1/v2 on a torchvision ResNet, with optional Feature Transformation of the logits.

    ``dim``: embedding size D (128); ``queue_size``: negatives K (65536); ``momentum``: key encoder
    EMA m (0.999); ``temperature``: T (0.07 v1, 0.2 v2); ``mlp``: v2's MLP head; ``bn_splits``: BN
    sub-batches on a single device (1 under DDP); ``ft``: the FT switches (None or disabled: plain MoCo).
    """

    def __init__(
        self,
        arch: str,
        dim: int = 128,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.07,
        mlp: bool = False,
        bn_splits: int = 1,
        ft: FeatureTransformConfig | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.queue_size = queue_size
        self.momentum = momentum
        self.temperature = temperature
        self.ft = ft if ft is not None and ft.enabled else None

        self.backbone_q = build_backbone(arch)
        self.projector_q = projector(feature_dim(arch), dim, mlp)
        self.backbone_k = build_backbone(arch)
        self.projector_k = projector(feature_dim(arch), dim, mlp)
        if bn_splits > 1:
            for part in (self.backbone_q, self.backbone_k):
                use_split_batch_norm(part, bn_splits)
        for param_q, param_k in zip(self.query_parameters(), self.key_parameters(), strict=True):
            param_k.data.copy_(param_q.data)
            param_k.requires_grad = False

        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def query_parameters(self) -> list[nn.Parameter]:
        return [*self.backbone_q.parameters(), *self.projector_q.parameters()]

    def key_parameters(self) -> list[nn.Parameter]:
        return [*self.backbone_k.parameters(), *self.projector_k.parameters()]

    def encode_queries(self, images: Tensor) -> Tensor:
        """Normalised query embeddings (B, D), with gradient."""
        return F.normalize(self.projector_q(self.backbone_q(images)), dim=1)

    def _encode_queries_with_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`encode_queries` and the backbone features (B, F) it projected."""
        features = self.backbone_q(images)
        return F.normalize(self.projector_q(features), dim=1), features

    @torch.no_grad()
    def momentum_update_key_encoder(self) -> None:
        """``p_k <- m * p_k + (1 - m) * p_q`` for every parameter (BN buffers keep their own statistics)."""
        for param_q, param_k in zip(self.query_parameters(), self.key_parameters(), strict=True):
            param_k.mul_(self.momentum).add_(param_q.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def encode_keys(self, images: Tensor, perm: Tensor | None = None) -> Tensor:
        """Normalised key embeddings (B, D) with shuffle BN; ``perm`` fixes the single-device shuffle."""
        if _distributed():
            return self._encode_keys_ddp(images)
        if perm is None:
            perm = torch.randperm(images.shape[0], device=images.device)
        keys = F.normalize(self.projector_k(self.backbone_k(images[perm])), dim=1)
        return keys[torch.argsort(perm)]

    @torch.no_grad()
    def _encode_keys_ddp(self, images: Tensor) -> Tensor:
        local = images.shape[0]
        gathered = gather_equal(images)
        shuffle = torch.randperm(gathered.shape[0], device=images.device)
        dist.broadcast(shuffle, src=0)
        rank = dist.get_rank()
        mine = shuffle.view(-1, local)[rank]
        keys = F.normalize(self.projector_k(self.backbone_k(gathered[mine])), dim=1)
        unshuffle = torch.argsort(shuffle).view(-1, local)[rank]
        return gather_equal(keys)[unshuffle]

    @torch.no_grad()
    def dequeue_and_enqueue(self, keys: Tensor) -> None:
        """Write the global batch of ``keys`` (B, D) at the pointer, overwriting the oldest; advance it."""
        keys = gather_equal(keys)
        batch = keys.shape[0]
        assert self.queue_size % batch == 0, "the queue size must be a multiple of the global batch"
        ptr = int(self.queue_ptr)
        self.queue[ptr : ptr + batch] = keys.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + batch) % self.queue_size

    def forward(
        self,
        im_q: Tensor,
        im_k: Tensor,
        apply_ft: bool = True,
        draws: FTDraws | None = None,
        measure_features: bool = False,
    ) -> MoCoOutput:
        """One MoCo step on two views (B, 3, H, W): logits, score statistics and the collapse metric of
        the projector output (of the backbone features too with ``measure_features``); enqueues the keys.

        FT applies when the model has an enabled FT config and ``apply_ft`` is true (the trainer
        passes ``epoch >= ft.start_epoch``); ``draws`` fixes its random draws (default: sampled here).
        """
        q, features = self._encode_queries_with_features(im_q)
        feature_std = collapse_metric(features) if measure_features else None
        with torch.no_grad():
            self.momentum_update_key_encoder()
            k = self.encode_keys(im_k)
        with torch.autocast(q.device.type, enabled=False):
            q, k = q.float(), k.float()
            queue = self.queue.clone()
            if self.ft is not None and apply_ft:
                if draws is None:
                    draws = sample_draws(self.ft, q.shape[0], q.shape[1], self.queue_size, q.device)
                with torch.no_grad():
                    stats_before = batch_score_stats(contrast_scores(q, k, queue))
                scores = feature_transform_scores(q, k, queue, self.ft, draws)
                stats_after = batch_score_stats(scores)
            else:
                scores = contrast_scores(q, k, queue)
                stats_before = stats_after = batch_score_stats(scores)
            logits = scores / self.temperature
        self.dequeue_and_enqueue(k)
        return MoCoOutput(
            logits=logits,
            stats_before_ft=stats_before,
            stats_after_ft=stats_after,
            output_std=collapse_metric(q),
            feature_std=feature_std,
        )
