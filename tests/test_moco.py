"""The MoCo module: queue, momentum encoder, single-device shuffle BN, FT as a plug-in, gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from sslbench.models.resnet import build_backbone
from sslbench.pretrain.config import FeatureTransformConfig
from sslbench.pretrain.moco import MoCo, SplitBatchNorm2d

ARCH = "resnet18_small_stem"


def _images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_queue_holds_the_last_k_keys_in_order_after_the_pointer_wraps():
    torch.manual_seed(0)
    moco = MoCo(ARCH, dim=4, queue_size=6)
    keys = F.normalize(torch.randn(10, 4), dim=1)
    for step in range(5):
        moco.dequeue_and_enqueue(keys[2 * step : 2 * step + 2])
    ptr = int(moco.queue_ptr)
    assert ptr == 10 % 6
    # oldest first: rolling the ring buffer by the pointer gives the last 6 keys in arrival order
    assert torch.equal(torch.roll(moco.queue, -ptr, dims=0), keys[-6:])
    with pytest.raises(AssertionError, match="multiple of the global batch"):
        moco.dequeue_and_enqueue(keys[:4])


def test_momentum_update_is_m_times_key_plus_one_minus_m_times_query():
    torch.manual_seed(0)
    moco = MoCo(ARCH, dim=8, queue_size=8, momentum=0.9, mlp=True)
    with torch.no_grad():
        for p in moco.query_parameters():
            p.add_(torch.randn_like(p))
    keys_before = [p.clone() for p in moco.key_parameters()]
    buffers_before = {n: b.clone() for n, b in moco.backbone_k.named_buffers()}
    moco.momentum_update_key_encoder()
    pairs = zip(moco.query_parameters(), moco.key_parameters(), keys_before, strict=True)
    for p_q, p_k, before in pairs:
        torch.testing.assert_close(p_k, 0.9 * before + 0.1 * p_q, rtol=0, atol=1e-6)
        assert not p_k.requires_grad
    for name, buffer in moco.backbone_k.named_buffers():
        assert torch.equal(buffer, buffers_before[name]), f"{name} moved: the EMA touches parameters only"


def test_single_device_shuffle_bn_is_bn_over_shuffled_sub_batches():
    torch.manual_seed(0)
    moco = MoCo(ARCH, dim=8, queue_size=16, mlp=True, bn_splits=2).train()
    assert isinstance(moco.backbone_k.bn1, SplitBatchNorm2d)
    images, perm = _images(8), torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])

    # by hand: a plain-BN copy of the key encoder run on each sub-batch alone. After shuffling,
    # position n holds image perm[n] and belongs to sub-batch n mod 2.
    plain = build_backbone(ARCH)
    plain.load_state_dict(moco.backbone_k.state_dict())
    head = copy.deepcopy(moco.projector_k)
    expected = torch.empty(8, 8)
    running_means = []
    with torch.no_grad():
        for s in range(2):
            encoder = copy.deepcopy(plain).train()
            members = perm[s::2]
            expected[members] = F.normalize(head(encoder(images[members])), dim=1)
            running_means.append(encoder.bn1.running_mean)
        whole_batch = F.normalize(head(copy.deepcopy(plain).train()(images)), dim=1)

    keys = moco.encode_keys(images, perm=perm)
    torch.testing.assert_close(keys, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(keys, whole_batch, atol=1e-3), "statistics must not span the whole batch"
    torch.testing.assert_close(moco.backbone_k.bn1.running_mean, torch.stack(running_means).mean(0))
    # in eval mode split BN is plain BN on the running statistics
    moco.eval()
    plain.load_state_dict(moco.backbone_k.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(moco.backbone_k(images), plain.eval()(images))


def _twin_models(ft: FeatureTransformConfig) -> tuple[MoCo, MoCo]:
    torch.manual_seed(0)
    plain = MoCo(ARCH, dim=8, queue_size=16, temperature=0.2, mlp=True, bn_splits=2)
    torch.manual_seed(0)
    with_ft = MoCo(ARCH, dim=8, queue_size=16, temperature=0.2, mlp=True, bn_splits=2, ft=ft)
    return plain, with_ft


def test_ft_off_forward_is_plain_moco_and_draws_no_random_numbers():
    ft = FeatureTransformConfig(enabled=True, start_epoch=5)
    plain, with_ft = _twin_models(ft)
    im_q, im_k = _images(4, seed=1), _images(4, seed=2)
    torch.manual_seed(7)
    out_plain = plain(im_q, im_k)
    rng_plain = torch.get_rng_state()
    torch.manual_seed(7)
    out_off = with_ft(im_q, im_k, apply_ft=False)  # the trainer's call before ft.start_epoch
    assert torch.equal(out_off.logits, out_plain.logits)
    assert torch.equal(torch.get_rng_state(), rng_plain), "FT off must not draw random numbers"
    assert torch.equal(with_ft.queue, plain.queue)
    assert torch.equal(out_off.stats_before_ft, out_off.stats_after_ft)
    # FT on changes the scores trained on against the plain scores of the same call (the queue has
    # moved since the calls above, so only a within-call comparison means anything here); the
    # trainer-level "FT off is plain MoCo bit for bit" is tests/test_pretrain_diagnostics.py
    out_on = with_ft(im_q, im_k, apply_ft=True)
    assert not torch.equal(out_on.stats_before_ft, out_on.stats_after_ft)


def test_moco_ft_step_trains_the_query_encoder_only():
    _, moco = _twin_models(FeatureTransformConfig(enabled=True, dim_mask="both"))
    out = moco(_images(4, seed=1), _images(4, seed=2))
    F.cross_entropy(out.logits, torch.zeros(4, dtype=torch.long)).backward()
    assert all(p.grad is None for p in moco.key_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in moco.query_parameters())


@pytest.mark.parametrize("ft", [None, FeatureTransformConfig(enabled=True, dim_mask="both")])
def test_logits_are_infonce_on_the_old_queue_and_the_original_keys_are_enqueued(ft):
    torch.manual_seed(0)
    moco = MoCo(ARCH, dim=8, queue_size=16, temperature=0.07, bn_splits=2, ft=ft)
    twin, ft_twin = copy.deepcopy(moco), copy.deepcopy(moco)
    im_q, im_k = _images(4, seed=1), _images(4, seed=2)
    torch.manual_seed(3)
    out = moco(im_q, im_k, apply_ft=False)
    # by hand, in MoCo's order: query, EMA update, shuffled keys (the same permutation draw)
    with torch.no_grad():
        torch.manual_seed(3)
        q = twin.encode_queries(im_q)
        twin.momentum_update_key_encoder()
        k = twin.encode_keys(im_k)
    expected = torch.cat(
        [torch.einsum("nc,nc->n", q, k)[:, None], torch.einsum("nc,kc->nk", q, twin.queue)], 1
    )
    torch.testing.assert_close(out.logits, expected / 0.07)
    assert torch.equal(moco.queue[:4], k) and torch.equal(moco.queue[4:], twin.queue[4:])
    assert int(moco.queue_ptr) == 4
    if ft is not None:  # with FT on, the queue still receives the original keys
        torch.manual_seed(3)
        ft_out = ft_twin(im_q, im_k, apply_ft=True)
        assert not torch.allclose(ft_out.logits, out.logits)
        assert torch.equal(ft_twin.queue[:4], k)
