"""Proxy attention: a learned prior on where to look, trained densely from the proxy alone.

An attention-pooled (multiple-instance) classifier over the proxy's cells:

    f_cell = E(the cell's proxy pixels, with half a cell of margin)       (B, width, c, c)
    a = softmax over valid cells of A(f)                                   (B, c^2)
    p(y | x~) = softmax( sum_cells a_cell * L(f)_cell )   per head

trained with `ObjectiveConfig.proxy_loss_weight * -log p(y | x~)`. The proxy cannot show what an object is
(a speed sign's number is illegible at 256x192) but it can show where something is that tells classes apart
(the sign is the only white disc in a red ring). Attention pooling makes the classifier find that place, and
its gradient reaches every cell every step, where the location posterior's score-function gradient only
reaches the cells it happened to sample. Each cell's features see only that cell and half a cell around it:
with the proxy encoder's wide receptive field instead, every cell knew about the object and the attention
learned to look anywhere but at it (tests/test_model.py holds the case). log a is added, with weight `anchor_weight`, to the mixture's
cell logits in place of the proxy-intensity anchor (which only suits dark backgrounds).

The anchor is detached there: the attention learns from the proxy classifier's loss only, and the posterior's
own cell scores (initialised at zero) learn what the glimpses add on top of it.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

MASKED = -1e9


class ProxyAttention(nn.Module):
    def __init__(self, channels: int, proxy_size: int, cells: int, width: int, heads: list[dict]):
        super().__init__()
        cell = max(1, proxy_size // cells)
        self.cells = cells
        self.instances = nn.Sequential(nn.Conv2d(channels, width, 2 * cell, cell, cell // 2), nn.ReLU(inplace=True),
                                       nn.Conv2d(width, width, 1), nn.ReLU(inplace=True))
        self.attention = nn.Conv2d(width, 1, 1)
        self.sizes = {h["name"]: h["num_classes"] for h in heads}
        self.cell_logits = nn.Conv2d(width, sum(self.sizes.values()), 1)

    def forward(self, proxy: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """proxy (B, C', P, P), valid (B, c^2) bool -> log attention (B, c^2), {head: logits (B, classes)}."""
        features = F.adaptive_avg_pool2d(self.instances(proxy), self.cells)
        log_attention = self.attention(features).flatten(1).masked_fill(~valid, MASKED).log_softmax(1)
        pooled = torch.einsum("bn,bkn->bk", log_attention.exp(), self.cell_logits(features).flatten(2))
        return log_attention, dict(zip(self.sizes, pooled.split(list(self.sizes.values()), 1)))
