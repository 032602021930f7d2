"""The built-in default data: digits from scikit-learn, Fashion-MNIST from its IDX files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from sslbench.data.registry import build_dataset
from sslbench.errors import DatasetError


def test_digits_splits_partition_the_data_and_keep_labels() -> None:
    parts = {s: build_dataset("digits", None, s) for s in ("train", "val", "trainval", "test")}
    assert len(parts["train"]) + len(parts["val"]) == len(parts["trainval"])
    assert len(parts["trainval"]) + len(parts["test"]) == len(load_digits().target)
    for part in parts.values():
        assert part.num_classes == 10 and set(part.targets) == set(range(10))
    image, label = parts["test"][0]
    assert image.mode == "RGB" and image.size == (32, 32) and label == parts["test"].targets[0]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    test = build_dataset("fashion-mnist", tmp_path, "test")
    assert len(test) == 10 and test.targets == list(range(10))
    assert len(build_dataset("fashion-mnist", tmp_path, "train")) == 40  # 20% held out for val


def test_fashion_mnist_missing_file_names_path_and_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"(?s)train-images-idx3-ubyte\.gz not found.*t10k-labels"):
        build_dataset("fashion-mnist", tmp_path, "train")
