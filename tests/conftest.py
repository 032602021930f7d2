"""Shared test set-up: skip ``gpu`` and ``detectron2`` tests, with the reason, where they cannot run."""

from __future__ import annotations

import importlib.util

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_gpu = pytest.mark.skip(
        reason="needs a CUDA device; none is visible (torch.cuda.is_available() is False)"
    )
    no_d2 = pytest.mark.skip(
        reason="needs detectron2, which no package registry carries: build it from source (see README) "
        "or run the tests in the Docker image"
    )
    has_gpu = torch.cuda.is_available()
    has_d2 = importlib.util.find_spec("detectron2") is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(no_gpu)
        if "detectron2" in item.keywords and not has_d2:
            item.add_marker(no_d2)


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(2)
