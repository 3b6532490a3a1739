"""Classifiers: p(y | f_1..f_T, h_T), an MLP over the mean glimpse feature and the final state, one head per
label; and optional per-glimpse heads p(y | g_t), linear in f_t, which score what each glimpse alone says."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self, hidden: int, heads: list[dict]):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({h["name"]: nn.Linear(hidden, h["num_classes"]) for h in heads})

    def forward(self, features: torch.Tensor, final_state: torch.Tensor) -> dict[str, torch.Tensor]:
        """features (B, T, hidden), final_state (B, hidden) -> {head: logits (B, classes)}."""
        trunk = self.trunk(torch.cat([features.mean(1), final_state], dim=-1))
        return {name: head(trunk) for name, head in self.heads.items()}


class GlimpseHeads(nn.Module):
    def __init__(self, hidden: int, heads: list[dict]):
        super().__init__()
        self.heads = nn.ModuleDict({h["name"]: nn.Linear(hidden, h["num_classes"]) for h in heads})

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """features (B, T, hidden) -> {head: logits (B, T, classes)}."""
        return {name: head(features) for name, head in self.heads.items()}
