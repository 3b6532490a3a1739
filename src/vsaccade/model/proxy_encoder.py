"""Proxy encoder: CNN(x~) -> a cells x cells feature map and a global embedding e, computed once per image.

Two layouts (`ModelConfig.proxy_encoder`):
  * "wide": a full-width convolution at the proxy's resolution, stride-2 stages until the map is at most twice
    the cell grid, one more convolution, adaptive pooling to the grid (the core benchmarks' encoder);
  * "strided": stride-2 stages from the first convolution (half width) straight down to about the cell grid,
    then one full-width convolution there; e embeds the map average-pooled to at most 8x8 cells. On Megapixel
    MNIST (180x180 proxy, 45x45 cells) it costs ~40x fewer multiply-adds and ~60x fewer parameters than "wide".
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

LAYOUTS = ("wide", "strided")
EMBED_GRID = 8  # "strided": the global embedding sees the feature map pooled to at most this many cells a side


def conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    # GroupNorm, not BatchNorm: statistics per sample, so results do not depend on batch composition.
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(min(8, cout), cout), nn.ReLU(inplace=True))


def halvings(proxy_size: int, cells: int) -> int:
    """How many stride-2 stages take the proxy to about the cell grid (never below it)."""
    return max(0, int(math.floor(math.log2(proxy_size / cells)))) if proxy_size > cells else 0


class ProxyEncoder(nn.Module):
    def __init__(self, channels: int, proxy_size: int, cells: int, width: int, hidden: int, layout: str = "wide"):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"proxy encoder layout must be one of {LAYOUTS}, got {layout!r}")
        stages = halvings(proxy_size, cells)
        if layout == "wide":
            layers = [conv_block(channels, width)]
            layers += [conv_block(width, width, stride=2) for _ in range(max(0, stages - 1))]
            layers += [conv_block(width, width)]
        else:
            widths = [channels] + [max(8, width // 2)] + [width] * max(stages, 1)
            layers = [conv_block(widths[i], widths[i + 1], stride=2 if i < stages else 1) for i in range(len(widths) - 1)]
        self.features = nn.Sequential(*layers)
        self.cells = cells
        self.embed_grid = cells if layout == "wide" else min(cells, EMBED_GRID)
        self.embed = nn.Sequential(nn.Linear(width * self.embed_grid**2, hidden), nn.ReLU(inplace=True))

    def forward(self, proxy: torch.Tensor, cell_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """proxy (B, C', P, P), cell_mask (B, cells, cells) -> features (B, F, cells, cells), e (B, hidden)."""
        maps = self.features(proxy)
        if maps.shape[-2:] != (self.cells, self.cells):  # pooling to the size a map has costs as much as a convolution
            maps = F.adaptive_avg_pool2d(maps, self.cells)
        features = maps * cell_mask[:, None]
        pooled = features if self.embed_grid == self.cells else F.adaptive_avg_pool2d(features, self.embed_grid)
        return features, self.embed(pooled.flatten(1))
