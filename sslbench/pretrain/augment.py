"""MoCo's augmentations (facebookresearch/moco ``main_moco.py``) and the two-crop view pair.

* ``mocov1``: RandomResizedCrop(scale 0.2-1), RandomGrayscale(0.2), ColorJitter(0.4, 0.4, 0.4, 0.4),
  horizontal flip (InstDisc's recipe, as MoCo v1 uses it);
* ``mocov2`` ("aug-plus", SimCLR-like): RandomResizedCrop(scale 0.2-1), ColorJitter(0.4, 0.4, 0.4,
  0.1) with p=0.8, RandomGrayscale(0.2), Gaussian blur with sigma ~ U(0.1, 2.0) with p=0.5,
  horizontal flip.

Both end in ToTensor and ImageNet mean/std normalisation. Every random choice comes from torch's
generator (the blur's sigma included, where MoCo uses Python's ``random``), so one seed governs a
view and :class:`SeededTwoCrops` can make each sample's views a function of (seed, epoch, index).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image, ImageFilter
from torch import Tensor
from torchvision import transforms as T

from sslbench.data.base import LabeledImages
from sslbench.pretrain.config import AugmentConfig
from sslbench.runtime.sampling import sample_rng

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GaussianBlur:
    """PIL Gaussian blur with sigma ~ U(low, high), as MoCo v2's ``GaussianBlur`` (sigma in [0.1, 2.0])."""

    def __init__(self, sigma: Sequence[float] = (0.1, 2.0)) -> None:
        self.low, self.high = float(sigma[0]), float(sigma[1])

    def __call__(self, image: Image.Image) -> Image.Image:
        sigma = self.low + (self.high - self.low) * float(torch.rand(()))
        return image.filter(ImageFilter.GaussianBlur(radius=sigma))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma=({self.low}, {self.high}))"


def moco_augmentation(cfg: AugmentConfig) -> Callable[[Image.Image], Tensor]:
    """One random view (3, size, size) of an RGB image, MoCo v1 or v2 recipe."""
    crop = T.RandomResizedCrop(cfg.size, scale=(cfg.min_scale, 1.0))
    if cfg.recipe == "mocov1":
        steps = [crop, T.RandomGrayscale(p=0.2), T.ColorJitter(0.4, 0.4, 0.4, 0.4)]
    else:
        steps = [
            crop,
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([GaussianBlur(cfg.blur_sigma)], p=0.5),
        ]
    steps += [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


class SeededTwoCrops(torch.utils.data.Dataset):
    """Two independent views (query, key) of each image of ``images``; labels are ignored.

    Items are addressed as ``(epoch, index)``: the views of one item depend only on ``(seed, epoch,
    index)``, not on the worker that makes them nor on what came before, so a run resumed in the
    middle of an epoch sees exactly the views the uninterrupted run saw. The global torch generator
    of the calling process is left as it was.
    """

    def __init__(
        self, images: LabeledImages, augment: Callable[[Image.Image], Tensor], seed: int, limit: int = 0
    ) -> None:
        self.images = images
        self.augment = augment
        self.seed = seed
        self.length = min(len(images), limit) if limit else len(images)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, Tensor]:
        epoch, index = item
        image = self.images.load_image(index).convert("RGB")
        with sample_rng(self.seed, epoch, index):
            return self.augment(image), self.augment(image)
