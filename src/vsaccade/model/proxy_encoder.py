"""Proxy encoder: CNN(x~) -> a cells x cells feature map and a global embedding e, computed once per image."""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


def conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    # GroupNorm, not BatchNorm: statistics per sample, so results do not depend on batch composition.
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(min(8, cout), cout), nn.ReLU(inplace=True))


class ProxyEncoder(nn.Module):
    def __init__(self, channels: int, proxy_size: int, cells: int, width: int, hidden: int):
        super().__init__()
        # Stride-2 stages until the map is at most twice the cell grid, then adaptive pooling to the grid.
        strides = max(0, int(math.floor(math.log2(proxy_size / cells))) - 1) if proxy_size > 2 * cells else 0
        layers = [conv_block(channels, width)]
        layers += [conv_block(width, width, stride=2) for _ in range(strides)]
        layers += [conv_block(width, width)]
        self.features = nn.Sequential(*layers)
        self.cells = cells
        self.embed = nn.Sequential(nn.Linear(width * cells * cells, hidden), nn.ReLU(inplace=True))

    def forward(self, proxy: torch.Tensor, cell_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """proxy (B, C', P, P), cell_mask (B, cells, cells) -> features (B, F, cells, cells), e (B, hidden)."""
        features = F.adaptive_avg_pool2d(self.features(proxy), self.cells) * cell_mask[:, None]
        return features, self.embed(features.flatten(1))
