"""The optional reconstruction term's decoder: log p(x~ | z_t, h_{t-1}), a continuous Bernoulli over the proxy
(the reference code used a plain Bernoulli on non-binary pixels: a bug we do not copy)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import ContinuousBernoulli


class ProxyDecoder(nn.Sequential):
    def __init__(self, hidden: int, channels: int, size: int):
        super().__init__(nn.Linear(3 + hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels * size**2))

    def log_prob(self, z, h, proxy, proxy_mask) -> torch.Tensor:
        """(B,) log p(x~ | z, h) over the proxy's real (unpadded) pixels."""
        logits = self(torch.cat([z, h], -1)).view_as(proxy)
        return (ContinuousBernoulli(logits=logits).log_prob(proxy) * proxy_mask[:, None]).flatten(1).sum(1)


class NoDecoder(nn.Module):
    def log_prob(self, z, h, proxy, proxy_mask) -> None:
        return None
