"""The fixed image transforms of the evaluation protocols, each with an ``image_size`` for small runs.

* :func:`eval_transform`: Resize 256 (bicubic) + CenterCrop 224, as DINO ``eval_knn.py`` uses for
  both the kNN bank and its queries, and MoCo ``main_lincls.py`` for validation (bilinear there).
* :func:`lbfgs_transform`: Resize 224 (bicubic) + CenterCrop 224, the ssl-transfer ``linear.py``
  features (Ericsson et al. 2021): the whole short side is kept, nothing is cropped away.
* :func:`train_transform`: RandomResizedCrop 224 + horizontal flip, MoCo ``main_lincls.py``
  (scale 0.08-1, torchvision's default; the FT repo's linear probe uses 0.2-1); bilinear by
  default, bicubic for ssl-transfer's fine-tuning.
* :func:`mae_train_transform`: MAE ``main_linprobe.py``'s RandomResizedCrop 224 (bicubic) + flip, with
  its crop rule (:class:`SingleDrawResizedCrop`, MAE ``util/crop.py``).

All normalise with the ImageNet mean and std. Where a protocol resizes to 256 before a 224 crop,
the resize is ``round(image_size / 0.875)`` so that the 224/256 ratio is kept at any size.
A transform's ``repr`` lists every parameter; the feature cache keys on it.
"""

from __future__ import annotations

import math

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_RATIO = 0.875  # 224 / 256
DEFAULT_IMAGE_SIZE = 224
MOCO_CROP_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop default, as MoCo main_lincls uses it


def _to_normalised_tensor() -> list[object]:
    return [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def resize_for_crop(image_size: int) -> int:
    """The short side to resize to before a centre crop of ``image_size`` (256 for 224)."""
    return round(image_size / CROP_RATIO)


def eval_transform(image_size: int = DEFAULT_IMAGE_SIZE) -> T.Compose:
    """Resize ``image_size / 0.875`` (bicubic) + CenterCrop ``image_size`` (DINO eval_knn)."""
    return T.Compose(
        [
            T.Resize(resize_for_crop(image_size), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            *_to_normalised_tensor(),
        ]
    )


def lbfgs_transform(image_size: int = DEFAULT_IMAGE_SIZE) -> T.Compose:
    """Resize ``image_size`` (bicubic) + CenterCrop ``image_size`` (ssl-transfer linear.py)."""
    return T.Compose(
        [
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            *_to_normalised_tensor(),
        ]
    )


def train_transform(
    image_size: int = DEFAULT_IMAGE_SIZE,
    scale: tuple[float, float] = MOCO_CROP_SCALE,
    interpolation: T.InterpolationMode = T.InterpolationMode.BILINEAR,
) -> T.Compose:
    """RandomResizedCrop ``image_size`` (``scale``) + horizontal flip (MoCo main_lincls, bilinear;
    ssl-transfer finetune.py resizes its crops bicubic)."""
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=scale, interpolation=interpolation),
            T.RandomHorizontalFlip(),
            *_to_normalised_tensor(),
        ]
    )


def describe_transform(transform: object) -> str:
    """One line naming every step and parameter of ``transform`` (its ``repr``, whitespace folded)."""
    return " ".join(repr(transform).split())


class SingleDrawResizedCrop(T.RandomResizedCrop):
    """RandomResizedCrop with MAE's crop rule (MAE ``util/crop.py``, after BYOL's TensorFlow code): one
    draw of area fraction and log aspect ratio, the box clipped to the image, instead of torchvision's
    up-to-ten tries with a centre-crop fallback. The draws use the global torch generator, in MAE's order
    (area, aspect ratio, top, left)."""

    @staticmethod
    def get_params(img: object, scale: list[float], ratio: list[float]) -> tuple[int, int, int, int]:  # type: ignore[override]
        width, height = TF.get_image_size(img)  # type: ignore[arg-type]
        area = height * width
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        low, high = torch.log(torch.tensor(ratio)).tolist()  # float32, as MAE takes the log of a tensor
        aspect = torch.exp(torch.empty(1).uniform_(low, high)).item()  # exp in float32, as MAE
        w = min(round(math.sqrt(target_area * aspect)), width)
        h = min(round(math.sqrt(target_area / aspect)), height)
        top = int(torch.randint(0, height - h + 1, size=(1,)).item())
        left = int(torch.randint(0, width - w + 1, size=(1,)).item())
        return top, left, h, w


def mae_train_transform(
    image_size: int = DEFAULT_IMAGE_SIZE, scale: tuple[float, float] = MOCO_CROP_SCALE
) -> T.Compose:
    """MAE main_linprobe.py: :class:`SingleDrawResizedCrop` ``image_size`` (bicubic) + horizontal flip."""
    return T.Compose(
        [
            SingleDrawResizedCrop(image_size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            *_to_normalised_tensor(),
        ]
    )


def check_randaug(config_str: str) -> list[str]:
    """Problems of a timm RandAugment string (``rand-m9-mstd0.5-inc1``), one phrase naming the key."""
    if not config_str.startswith("rand"):
        return [f"randaug {config_str!r} is not a timm RandAugment string (rand-m9-mstd0.5-inc1)"]
    try:
        from timm.data.auto_augment import rand_augment_transform
    except ImportError:
        return ["randaug needs timm: pip install 'sslbench[vit]' (or pip install timm)"]
    try:
        rand_augment_transform(config_str, {})
    except (AssertionError, ValueError, KeyError, IndexError) as exc:
        return [f"randaug {config_str!r} is not a timm RandAugment string ({exc or 'unknown section'})"]
    return []


def timm_train_transform(
    image_size: int, scale: tuple[float, float], interpolation: str, randaug: str, reprob: float
) -> object:
    """MAE's training transform (mae ``util/datasets.py`` build_transform) through timm's
    ``create_transform``: RandomResizedCrop (``scale``, ratio 3/4-4/3) + flip, RandAugment ``randaug``
    (color jitter off, as MAE passes none), ImageNet normalisation, RandomErasing ``reprob`` in pixel
    mode, one box (MAE --remode pixel --recount 1)."""
    from timm.data import create_transform

    transform = create_transform(
        input_size=image_size,
        is_training=True,
        scale=scale,
        interpolation=interpolation,
        auto_augment=randaug or None,
        color_jitter=None,
        re_prob=reprob,
        re_mode="pixel",
        re_count=1,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    keep_zero_bit_posterize(transform)
    return transform


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs: object) -> Image.Image:
    """Pillow's posterize, where keeping 0 bits gives the black image Pillow < 13 gave."""
    from timm.data import auto_augment

    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return auto_augment.posterize(img, bits_to_keep, **kwargs)


def keep_zero_bit_posterize(transform: object) -> None:
    """timm's increasing posterize (RandAugment ``inc1``) keeps ``4 - int(m / 10 * 4)`` bits: 0 at
    magnitude 10, which ``mstd0.5`` around m9 reaches after clipping in ~2% of its draws. Pillow < 13
    (what MAE ran) returned a black image for 0 bits; Pillow 13 raises. The RandAugment inside
    ``transform`` is given the old result, so the recipe neither crashes nor changes."""
    from timm.data import auto_augment

    for step in getattr(transform, "transforms", ()):
        for op in getattr(step, "ops", ()) if isinstance(step, auto_augment.RandAugment) else ():
            if op.aug_fn is auto_augment.posterize:
                op.aug_fn = _posterize
