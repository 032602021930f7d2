"""The built-in default data: real images that ship with installed packages, so jobs run anywhere.

* ``digits``: scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels, 10 classes), which the
  scikit-learn wheel carries. Upsampled to 32x32 once. Not an official split: a seeded, stratified
  25% is the test set, and 20% of the rest the validation set.
* ``fashion-mnist``: the four gzipped IDX files (Debian's ``dataset-fashion-mnist`` installs them in
  ``/usr/share/datasets/fashion-mnist``; ``--root`` points elsewhere). 60,000 train / 10,000 test,
  28x28, 10 classes; validation is a seeded 20% of train.
"""

from __future__ import annotations

import gzip
import struct
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from sslbench.data.base import ImageArray, Transform
from sslbench.data.splits import stratified_holdout
from sslbench.errors import DatasetError

SPLITS = ("train", "val", "trainval", "test")
DIGITS_SIZE = 32
DIGITS_TEST_FRACTION = 0.25
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _check_split(name: str, split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"{name}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def _carve(split: str, images: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``trainval`` as given; ``train``/``val`` a seeded stratified 80/20 partition of it."""
    if split == "trainval":
        return images, targets
    train, val = stratified_holdout(targets.tolist())
    index = np.asarray(train if split == "train" else val)
    return images[index], targets[index]


@cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    up = np.stack(
        [np.asarray(Image.fromarray(g).resize((DIGITS_SIZE, DIGITS_SIZE), Image.BICUBIC)) for g in grey]
    )
    return up, bunch.target.astype(np.int64)


def digits(split: str, transform: Transform | None = None) -> ImageArray:
    """scikit-learn's digits, 32x32 grey (converted to RGB on access)."""
    _check_split("digits", split)
    images, targets = _digits_arrays()
    trainval, test = stratified_holdout(targets.tolist(), fraction=DIGITS_TEST_FRACTION, seed=1)
    if split == "test":
        index = np.asarray(test)
        return ImageArray(
            "digits", split, [str(d) for d in range(10)], images[index], targets[index], transform
        )
    images, targets = images[np.asarray(trainval)], targets[np.asarray(trainval)]
    images, targets = _carve(split, images, targets)
    return ImageArray("digits", split, [str(d) for d in range(10)], images, targets, transform)


def _read_idx(path: Path, expected_dims: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or dims != expected_dims:
        raise DatasetError(f"{path}: not an IDX file of unsigned bytes with {expected_dims} dimensions")
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist(
    split: str, root: str | Path | None = None, transform: Transform | None = None
) -> ImageArray:
    """Fashion-MNIST from its gzipped IDX files."""
    _check_split("fashion-mnist", split)
    root = Path(root) if root is not None else FASHION_MNIST_ROOT
    source = "test" if split == "test" else "train"
    paths = [root / name for name in _FASHION_FILES[source]]
    for path in paths:
        if not path.is_file():
            layout = "\n".join(f"  {root}/{f}" for pair in _FASHION_FILES.values() for f in pair)
            raise DatasetError(
                f"fashion-mnist: {path} not found. Expected the four gzipped IDX files:\n{layout}\n"
                "(Debian: apt-get install dataset-fashion-mnist)"
            )
    images, targets = _read_idx(paths[0], 3), _read_idx(paths[1], 1).astype(np.int64)
    if len(images) != len(targets):
        raise DatasetError(f"fashion-mnist: {len(images)} images but {len(targets)} labels under {root}")
    if split != "test":
        images, targets = _carve(split, images, targets)
    return ImageArray("fashion-mnist", split, FASHION_MNIST_CLASSES, images, targets, transform)
