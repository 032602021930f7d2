"""The dataset interface every reader implements: RGB images with labels ``0..C-1``, in a fixed order.

A reader knows its classes (names, in label order) and its targets without decoding any image, so
probes can count classes and build splits cheaply; ``__getitem__`` decodes one image, converts it to
RGB (CUB and iNat hold greyscale and CMYK files) and applies the transform.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

Transform = Callable[[Image.Image], Any]


class LabeledImages(Dataset, abc.ABC):
    """Base class: ``classes`` (names by label), ``targets`` (one label per sample), ``load_image(i)``."""

    def __init__(
        self,
        name: str,
        split: str,
        classes: Sequence[str],
        targets: Sequence[int],
        transform: Transform | None = None,
    ) -> None:
        self.name = name
        self.split = split
        self.classes = list(classes)
        self.targets = [int(t) for t in targets]
        self.transform = transform
        if self.targets and not 0 <= min(self.targets) <= max(self.targets) < len(self.classes):
            raise ValueError(f"{name}/{split}: labels must lie in 0..{len(self.classes) - 1}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @abc.abstractmethod
    def load_image(self, index: int) -> Image.Image:
        """The ``index``-th image, undecoded transforms not applied."""

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.load_image(index).convert("RGB")
        return (self.transform(image) if self.transform else image), self.targets[index]


class ImageFiles(LabeledImages):
    """Images stored as files: one path per sample, optionally cropping ``crop_bottom`` pixels."""

    def __init__(
        self,
        name: str,
        split: str,
        classes: Sequence[str],
        paths: Sequence[Path],
        targets: Sequence[int],
        transform: Transform | None = None,
        crop_bottom: int = 0,
    ) -> None:
        super().__init__(name, split, classes, targets, transform)
        if len(paths) != len(self.targets):
            raise ValueError(f"{name}/{split}: {len(paths)} paths but {len(self.targets)} labels")
        self.paths = [Path(p) for p in paths]
        self.crop_bottom = crop_bottom

    def load_image(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as image:
            image.load()
            if self.crop_bottom:
                width, height = image.size
                image = image.crop((0, 0, width, height - self.crop_bottom))
            return image


class ImageArray(LabeledImages):
    """Images held in memory as a ``uint8`` array ``(N, H, W)`` (grey) or ``(N, H, W, 3)``."""

    def __init__(
        self,
        name: str,
        split: str,
        classes: Sequence[str],
        images: np.ndarray,
        targets: Sequence[int],
        transform: Transform | None = None,
    ) -> None:
        super().__init__(name, split, classes, targets, transform)
        if images.dtype != np.uint8 or len(images) != len(self.targets):
            raise ValueError(f"{name}/{split}: expected {len(self.targets)} uint8 images, got {images.shape}")
        self.images = images

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])
