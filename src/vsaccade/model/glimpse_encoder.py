"""Glimpse encoders: CNN(g_t) -> f_t, one feature vector per W x W glimpse. `GlimpseEncoder` ("strided"): 3x3
convolutions of stride 2, group-normalised (per sample). `PooledGlimpseEncoder` ("pooled"): 3x3 convolutions of
stride 1, batch-normalised, each followed by 2x2 max pooling, as small image classifiers are built; it learns to read
small glimpses of signs from image labels far faster (docs/benchmarks/labels-only.md), and is the per-glimpse heads'
own reader (ModelConfig.reader_encoder) where reading is trained apart from looking.

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
        layers, size, cin = self.layers(channels, glimpse_size, width)
        self.features = nn.Sequential(*layers)
        if pool == "flatten":
            self.project = nn.Sequential(nn.Flatten(), nn.Linear(cin * size * size, hidden), nn.ReLU(inplace=True))
        else:
            self.project = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, hidden), nn.ReLU(inplace=True))

    @staticmethod
    def layers(channels: int, glimpse_size: int, width: int) -> tuple[list, int, int]:
        """(layers, side of their output map, its channels): 3x3 convolutions of stride 2 down to a side of 4."""
        layers, size, cin = [conv_block(channels, width // 2)], glimpse_size, width // 2
        while size > 4:
            layers.append(conv_block(cin, width, stride=2))
            size, cin = (size + 1) // 2, width
        return layers, size, cin

    def forward(self, glimpses: torch.Tensor) -> torch.Tensor:
        """(N, C, W, W) -> (N, hidden); reported to the current instrument, if any, as stage "encode"."""
        with instruments.stage("encode"):
            return self.project(self.features(glimpses))


class PooledGlimpseEncoder(GlimpseEncoder):
    @staticmethod
    def layers(channels: int, glimpse_size: int, width: int) -> tuple[list, int, int]:
        """3x3 convolutions of stride 1, batch norm and 2x2 max pooling down to a side of 4."""
        layers, size, cin = [], glimpse_size, channels
        while size > 4:
            cout = width if layers else width // 2
            layers += [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            size, cin = size // 2, cout
        return layers, size, cin


GLIMPSE_ENCODERS = {"strided": GlimpseEncoder, "pooled": PooledGlimpseEncoder}
