"""Glimpse readers: what the model reads at a window. A reader turns windows z (B, 3) into the glimpse pixels and
the features the core and the per-glimpse heads see. `GlimpseReader` samples the window from the large image
(model/glimpse_sampler.py) and encodes it, optionally with a second encoder for the per-glimpse heads alone;
`NoGlimpses`, the control, reads nothing (zeros, exactly as if the glimpse features were zeroed)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .glimpse_sampler import sample_glimpses


class Seen(NamedTuple):
    glimpse: torch.Tensor  # (B, C, W, W) the glimpse's pixels
    features: torch.Tensor  # (B, hidden) what the core sees
    read: torch.Tensor  # (B, hidden) what the per-glimpse heads see


class GlimpseReader(nn.Module):
    def __init__(self, encoder: nn.Module, size: int, separate: nn.Module | None = None):
        super().__init__()
        self.encoder, self.size = encoder, size
        self.separate = separate  # the per-glimpse heads' own encoder (ModelConfig.reader=separate)

    def forward(self, images, z: torch.Tensor) -> Seen:
        glimpse = sample_glimpses(images, z, self.size)
        features = self.encoder(glimpse)
        return Seen(glimpse, features, self.separate(glimpse) if self.separate is not None else features)

    def read_only(self, images, z: torch.Tensor) -> torch.Tensor:
        """(B, hidden) what the per-glimpse heads would see at windows z (box supervision's extra glimpses)."""
        return (self.separate or self.encoder)(sample_glimpses(images, z, self.size))


class NoGlimpses(nn.Module):
    """The no-glimpse control: nothing is read."""

    def __init__(self, channels: int, size: int, hidden: int):
        super().__init__()
        self.channels, self.size, self.hidden = channels, size, hidden

    def forward(self, images, z: torch.Tensor) -> Seen:
        glimpse = z.new_zeros(len(z), self.channels, self.size, self.size)
        features = z.new_zeros(len(z), self.hidden)
        return Seen(glimpse, features, features)

    def read_only(self, images, z: torch.Tensor) -> torch.Tensor:
        return z.new_zeros(len(z), self.hidden)
