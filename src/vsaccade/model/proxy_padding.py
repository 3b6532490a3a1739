"""What the networks over the proxy see in its padding.

The proxy is the image placed top-left on a P x P canvas (geometry.py); the rest is padding, masked out of every
location distribution, but the convolutions over the proxy still see it. With zero padding, a photo's last rows
border a black band: a step the cells beside it can learn to score as content (a labels-only street-scale model
spent three of its four glimpses on the bottom edge: docs/benchmarks/labels-only.md). "edge" fills the padding
with the nearest image pixel, per image, so no step remains and what the padding held cannot matter.
"""

from __future__ import annotations

import torch
from torch import nn


class ZeroPadding(nn.Module):
    """The proxy as the task made it."""

    def forward(self, proxy: torch.Tensor, proxy_mask: torch.Tensor) -> torch.Tensor:
        return proxy


class EdgePadding(nn.Module):
    """Every padding pixel takes the value of the nearest image pixel (the image's last row and column repeated)."""

    def forward(self, proxy: torch.Tensor, proxy_mask: torch.Tensor) -> torch.Tensor:
        """proxy (B, C, P, P); proxy_mask (B, P, P) bool, true on the image's top-left rows x cols."""
        batch, _, size, _ = proxy.shape
        rows = proxy_mask.any(2).sum(1).clamp(min=1)  # (B,)
        cols = proxy_mask.any(1).sum(1).clamp(min=1)
        index = torch.arange(size, device=proxy.device)
        row = torch.minimum(index[None], rows[:, None] - 1)  # (B, P): the source row of each row
        col = torch.minimum(index[None], cols[:, None] - 1)
        image = torch.arange(batch, device=proxy.device)[:, None, None]
        return proxy.permute(0, 2, 3, 1)[image, row[:, :, None], col[:, None, :]].permute(0, 3, 1, 2)


PROXY_PADDINGS = {"zero": ZeroPadding, "edge": EdgePadding}
