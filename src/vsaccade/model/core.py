"""Recurrent core: h_t = RNN([e, f_t, embed(z_t)], h_{t-1}), so the next saccade depends on what was seen."""

from __future__ import annotations

import torch
from torch import nn


class RecurrentCore(nn.Module):
    def __init__(self, hidden: int, rnn: str = "gru", sees_glimpses: bool = True):
        super().__init__()
        self.sees_glimpses = sees_glimpses
        self.embed_z = nn.Sequential(nn.Linear(3, hidden // 2), nn.ReLU(inplace=True))
        inputs = hidden + hidden // 2 + (hidden if sees_glimpses else 0)
        self.cell = nn.GRUCell(inputs, hidden) if rnn == "gru" else nn.LSTMCell(inputs, hidden)
        self.init_state = nn.Linear(hidden, hidden)

    def initial(self, e: torch.Tensor):
        h = torch.tanh(self.init_state(e))
        return h if isinstance(self.cell, nn.GRUCell) else (h, torch.zeros_like(h))

    @staticmethod
    def output(state) -> torch.Tensor:
        return state if isinstance(state, torch.Tensor) else state[0]

    def forward(self, e: torch.Tensor, f: torch.Tensor, z: torch.Tensor, state):
        parts = [e, self.embed_z(z)] + ([f] if self.sees_glimpses else [])
        return self.cell(torch.cat(parts, dim=-1), state)
