"""The dataset interface every reader implements: RGB images with labels ``0..C-1``, in a fixed order.

A reader knows its classes (names, in label order) and its targets without decoding any image, so
probes can count classes and build splits cheaply; ``__getitem__`` decodes one image, converts it to
RGB (CUB and iNat hold greyscale and CMYK files) and applies the transform.
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from sslbench.errors import DatasetError

Transform = Callable[[Image.Image], Any]
# 16-bit greyscale PNGs open in these modes; RGB conversion would clip them to white.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image, where: str) -> Image.Image:
    """``image`` as 8-bit RGB. 16-bit greyscale (PNG) is scaled by 255/65535 first, as converting it
    directly saturates every pixel above 255; floating-point images are refused (no known range)."""
    if image.mode in _WIDE_GREY_MODES:
        values = np.asarray(image, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DatasetError(f"{where}: {image.mode} image values outside 0..65535 (not a 16-bit image)")
        image = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    elif image.mode == "F":
        raise DatasetError(f"{where}: floating-point image (mode F); convert it to 8 or 16 bits")
    return image.convert("RGB")


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

    def describe_sample(self, index: int) -> str:
        """How errors name sample ``index``."""
        return f"{self.name}/{self.split} index {index}"

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = to_rgb(self.load_image(index), self.describe_sample(index))
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

    def describe_sample(self, index: int) -> str:
        return f"{self.paths[index]} ({self.name}/{self.split} index {index})"

    def load_image(self, index: int) -> Image.Image:
        """Decode the file; an unreadable, empty, truncated or oversized (PIL's decompression-bomb
        limit) image is a DatasetError naming the file and the index."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(self.paths[index]) as image:
                    image.load()
                    if self.crop_bottom:
                        width, height = image.size
                        image = image.crop((0, 0, width, height - self.crop_bottom))
                    return image
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DatasetError(f"{self.describe_sample(index)}: refused, {exc}") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(f"{self.describe_sample(index)}: cannot read the image ({exc})") from None


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
