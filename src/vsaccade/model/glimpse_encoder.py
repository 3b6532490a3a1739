"""Glimpse encoder: CNN(g_t) -> f_t, one feature vector per W x W glimpse.

`pool` says how the final map becomes a vector: "flatten" (a linear map of every position: where in the glimpse
a pattern sits matters) or "mean" (global average pooling: the same features wherever the object sits in the
window, which suits windows larger than their objects).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import instruments
from .proxy_encoder import conv_block

POOLS = ("flatten", "mean")


class GlimpseEncoder(nn.Module):
    def __init__(self, channels: int, glimpse_size: int, width: int, hidden: int, pool: str = "flatten"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"glimpse pooling must be one of {POOLS}, got {pool!r}")
        layers, size, cin = [conv_block(channels, width // 2)], glimpse_size, width // 2
        while size > 4:
            layers.append(conv_block(cin, width, stride=2))
            size, cin = (size + 1) // 2, width
        self.features = nn.Sequential(*layers)
        if pool == "flatten":
            self.project = nn.Sequential(nn.Flatten(), nn.Linear(cin * size * size, hidden), nn.ReLU(inplace=True))
        else:
            self.project = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, hidden), nn.ReLU(inplace=True))

    def forward(self, glimpses: torch.Tensor) -> torch.Tensor:
        """(N, C, W, W) -> (N, hidden); reported to the current instrument, if any, as stage "encode"."""
        with instruments.stage("encode"):
            return self.project(self.features(glimpses))
