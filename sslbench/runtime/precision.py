"""Numeric precision and memory layout: bf16 autocast and channels_last on CUDA, float32 on the CPU.

The losses stay in float32 (callers cast the backbone's output with ``.float()``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Precision:
    """What a loop on ``device`` runs in: ``amp`` (bf16 autocast) and ``channels_last``, CUDA only."""

    device: torch.device
    amp: bool = True
    channels_last: bool = True

    def __post_init__(self) -> None:
        cuda = self.device.type == "cuda"
        object.__setattr__(self, "amp", self.amp and cuda)
        object.__setattr__(self, "channels_last", self.channels_last and cuda)

    @property
    def name(self) -> str:
        """As the records state it: ``bf16-autocast`` or ``fp32``."""
        return "bf16-autocast" if self.amp else "fp32"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def model(self, model: nn.Module) -> nn.Module:
        """``model`` on the device, in channels_last where that is on."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """A batch ``(B, 3, H, W)`` on the device, in the model's memory format."""
        return images.to(self.device, non_blocking=True, memory_format=self.memory_format)


def autocast_for(tensor: torch.Tensor) -> AbstractContextManager:
    """bf16 autocast when ``tensor`` lives on CUDA (for modules that see only their input)."""
    return Precision(tensor.device).autocast()
