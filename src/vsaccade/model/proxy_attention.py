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

Presence (anchor="presence"): where a class head holds a background class b ("none": no object), that head's
classifier is factorised into whether any cell shows an object and which object it is,

    m = max over valid cells of A(f)                    (B,)   the most object-like cell's score
    p(b | x~) = sigmoid(-m),   p(c | x~) = sigmoid(m) * softmax over c != b of the pooled logits

so the label trains A directly as a multiple-instance detector (an object is in the image iff some cell shows
one), through the one cell that is most object-like. On the street-scale speed signs, the 9-class softmax over
attention-pooled logits never started to localise from labels, while this binary max-pooled signal did, though not
from every initialisation (docs/benchmarks/labels-only.md): the proxy shows that a sign is there long before it
shows which.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

MASKED = -1e9


def instance_network(kind: str, channels: int, proxy_size: int, cells: int, width: int) -> nn.Module:
    """Per-cell features. "cell": one convolution over the cell and half a cell around it; "strided": four 3x3
    convolutions, strides 2, 2, 1, 2 (receptive field 31 proxy pixels), each batch-normalised, for objects a few
    proxy pixels wide whose shape, not one cell's colours, tells them apart. Without the normalisation the presence
    anchor started on the street-scale signs from 2 of 8 initialisations within 3 epochs (another after 17); with
    it, from 6 of 8 (docs/benchmarks/labels-only.md)."""
    if kind == "strided":
        # Output j of the stride-8 stack is centred on input pixel 8j, the corner of cell j: shifting the input by
        # half the stride centres it on the cell (on a toy of blobs, its top cell was otherwise as often the blob's
        # neighbour as the blob's; tests/test_model.py).
        layers = [nn.ZeroPad2d((-4, 4, -4, 4))]
        for c_in, c_out, stride in ((channels, width // 2, 2), (width // 2, width, 2), (width, width, 1), (width, width, 2)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        return nn.Sequential(*layers)
    cell = max(1, proxy_size // cells)
    return nn.Sequential(nn.Conv2d(channels, width, 2 * cell, cell, cell // 2), nn.ReLU(inplace=True),
                         nn.Conv2d(width, width, 1), nn.ReLU(inplace=True))


class ProxyAttention(nn.Module):
    def __init__(self, channels: int, proxy_size: int, cells: int, width: int, heads: list[dict],
                 background: dict | None = None, network: str = "cell"):
        """background: {class head: index of its background class} for the presence factorisation (above);
        network: the instance network (instance_network)."""
        super().__init__()
        self.background = dict(background or {})
        self.cells = cells
        self.instances = instance_network(network, channels, proxy_size, cells, width)
        self.attention = nn.Conv2d(width, 1, 1)
        self.sizes = {h["name"]: h["num_classes"] for h in heads}
        self.cell_logits = nn.Conv2d(width, sum(self.sizes.values()), 1)

    def forward(self, proxy: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """proxy (B, C', P, P), valid (B, c^2) bool -> log attention (B, c^2), {head: logits (B, classes)}."""
        features = F.adaptive_avg_pool2d(self.instances(proxy), self.cells)
        scores = self.attention(features).flatten(1).masked_fill(~valid, MASKED)
        log_attention = scores.log_softmax(1)
        # With a presence head, the cell features and the attention learn from presence alone: which object is seen
        # is read from them without moving them (that gradient is the 9-class one which, on the street-scale signs,
        # kept the attention off the sign).
        weights, seen = (log_attention.exp().detach(), features.detach()) if self.background else (log_attention.exp(), features)
        pooled = torch.einsum("bn,bkn->bk", weights, self.cell_logits(seen).flatten(2))
        logits = dict(zip(self.sizes, pooled.split(list(self.sizes.values()), 1)))
        for head, background in self.background.items():
            logits[head] = presence_log_probs(scores.amax(1), logits[head], background)
        return log_attention, logits


def presence_log_probs(presence: torch.Tensor, logits: torch.Tensor, background: int) -> torch.Tensor:
    """presence (B,) score m, logits (B, K) -> (B, K) log p: log sigmoid(-m) for the background class, log sigmoid(m)
    + log softmax over the other classes for them."""
    objects = logits.index_fill(1, torch.tensor([background], device=logits.device), MASKED).log_softmax(1)
    log_probs = F.logsigmoid(presence)[:, None] + objects
    return log_probs.index_copy(1, torch.tensor([background], device=logits.device), F.logsigmoid(-presence)[:, None])
