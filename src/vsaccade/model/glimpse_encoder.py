"""Glimpse encoder: CNN(g_t) -> f_t, one feature vector per W x W glimpse."""

from __future__ import annotations

import torch
from torch import nn

from .proxy_encoder import conv_block


class GlimpseEncoder(nn.Module):
    def __init__(self, channels: int, glimpse_size: int, width: int, hidden: int):
        super().__init__()
        layers, size, cin = [conv_block(channels, width // 2)], glimpse_size, width // 2
        while size > 4:
            layers.append(conv_block(cin, width, stride=2))
            size, cin = (size + 1) // 2, width
        self.features = nn.Sequential(*layers)
        self.project = nn.Sequential(nn.Flatten(), nn.Linear(cin * size * size, hidden), nn.ReLU(inplace=True))

    def forward(self, glimpses: torch.Tensor) -> torch.Tensor:
        """(N, C, W, W) -> (N, hidden)."""
        return self.project(self.features(glimpses))
