"""Iterative Patch Selection (`ips`; Bergner, Lippert and Mahendran, ICLR 2023), in the harness as a peer to compare
where-to-look mechanisms with, not backbones: its patch encoder is our glimpse encoder, its patches are our windows
(square, side s_min of the image's shorter side, tiling the image, each read into glimpse_size pixels by our glimpse
sampler), and it keeps M = `glimpses` patches.

    selection (no gradient): the image's patches, `chunk` at a time, are encoded and scored by the aggregator's
        attention; the M best of (the M kept so far + the chunk) are kept. Memory is bounded by M + chunk patches,
        whatever the image's size; every pixel of the image is read once.
    aggregation (with gradient): the M kept patches re-encoded; multi-head cross-attention from one learned query
        over them (softmax over the M per head), the heads' weighted values joined and projected, then one linear
        classifier per head.

A patch's score is its attention logit averaged over the heads: what the aggregator would weigh it by. No proxy is
used: IPS reads every pixel of the image, which is its cost; each patch is read as our glimpses are, at the pyramid
level and resampling our glimpse sampler uses for a window of its side (64-px patches into 32 pixels on Megapixel,
as the issue's like-for-like comparison asks: glimpse_size = the patch side reads at full resolution).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ConfigError, ModelConfig
from ..geometry import centre_normalised
from .baselines import Heads
from .glimpse_encoder import GlimpseEncoder
from .glimpse_sampler import sample_glimpses
from .registry import register_model
from .saccader import SaccadeOutput, check_inputs

CHUNK = 64  # patches encoded at a time while selecting
ATTENTION_HEADS = 4


def patch_windows(height: int, width: int, s: float) -> torch.Tensor:
    """(N, 3) windows z = (s, u, v) of side s (of the shorter image side) tiling the image row by row; the last
    row and column are moved inside the image, so every pixel is in some window."""
    side = s * min(height, width)
    if side > min(height, width):
        raise ConfigError(f"ips patches of side {side:.0f} px do not fit a {width}x{height} image")
    rows, cols = math.ceil(height / side - 1e-9), math.ceil(width / side - 1e-9)
    y = (torch.arange(rows, dtype=torch.float64) * side).clamp(max=height - side) + side / 2
    x = (torch.arange(cols, dtype=torch.float64) * side).clamp(max=width - side) + side / 2
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    u, v = centre_normalised(xx.flatten(), yy.flatten(), height, width)
    return torch.stack([torch.full_like(u, s), u, v], -1).float()


class CrossAttentionPool(nn.Module):
    """One learned query attending over N patch features with `heads` heads -> (B, hidden) and the per-patch score
    (the attention logit averaged over heads)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ConfigError(f"ips: hidden ({hidden}) must be a multiple of its {heads} attention heads")
        self.heads, self.width = heads, hidden // heads
        self.query = nn.Parameter(torch.randn(heads, self.width) / math.sqrt(self.width))
        self.keys, self.values = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.out = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, hidden) -> (B, heads, N) attention logits."""
        keys = self.keys(features).unflatten(-1, (self.heads, self.width))  # (B, N, heads, width)
        return torch.einsum("bnhw,hw->bhn", keys, self.query) / math.sqrt(self.width)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).mean(1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weights = self.logits(features).softmax(-1)  # (B, heads, N)
        values = self.values(features).unflatten(-1, (self.heads, self.width))  # (B, N, heads, width)
        return self.out(torch.einsum("bhn,bnhw->bhw", weights, values).flatten(1))


class IterativePatchSelection(nn.Module):
    reference_sources = ()
    reads_proxy = False  # callers need not make one (api.model_input, bench)

    def __init__(self, config: ModelConfig, chunk: int = CHUNK):
        super().__init__()
        c = self.config = config
        if c.readout != "mean":
            raise ConfigError("ips has no count readout: its features are an attention-pooled mean of patches")
        if chunk < 1:
            raise ConfigError(f"ips: chunk must be positive, got {chunk}")
        self.chunk = chunk
        self.encoder = GlimpseEncoder(c.image_channels, c.glimpse_size, c.glimpse_width, c.hidden, c.glimpse_pool)
        self.pool = CrossAttentionPool(c.hidden, ATTENTION_HEADS)
        self.heads = Heads(c.hidden, c.heads, c.readout)

    @property
    def glimpses_per_image(self) -> int:
        return self.config.glimpses

    @torch.no_grad()
    def select(self, image, windows: torch.Tensor) -> torch.Tensor:  # the encoder has no batch statistics or dropout
        """(M,) indices into `windows` (N, 3) of the M best-scored patches of one image, `chunk` patches at a time."""
        m, kept, kept_features = self.config.glimpses, windows.new_zeros(0, dtype=torch.long), None
        for start in range(0, len(windows), self.chunk):
            index = torch.arange(start, min(start + self.chunk, len(windows)), device=windows.device)
            features = self.encoder(sample_glimpses([image] * len(index), windows[index], self.config.glimpse_size))
            if kept_features is not None:
                index, features = torch.cat([kept, index]), torch.cat([kept_features, features])
            best = self.pool.score(features[None])[0].topk(min(m, len(index))).indices
            kept, kept_features = index[best], features[best]
        return kept

    def forward(self, images, proxy, proxy_mask, source: str = "posterior", sample: bool = True,
                noise=None, kl: bool = True) -> SaccadeOutput:
        """images: B LargeImages (the proxy is checked, not used). The M patches are the best-scored ones whatever
        `source` and `sample` ask: IPS's selection is deterministic."""
        check_inputs(self.config, images, proxy, proxy_mask)
        c, device = self.config, proxy.device
        z = []
        for image in images:
            windows = patch_windows(image.height, image.width, c.s_min).to(device)
            if len(windows) < c.glimpses:
                raise ValueError(f"ips keeps {c.glimpses} patches but a {image.width}x{image.height} image has "
                                 f"{len(windows)}: lower model.glimpses or model.s_min")
            z.append(windows[self.select(image, windows)])
        z = torch.stack(z)  # (B, M, 3)
        batch, m = z.shape[:2]
        glimpses = sample_glimpses([image for image in images for _ in range(m)], z.flatten(0, 1), c.glimpse_size)
        features = self.encoder(glimpses).view(batch, m, -1)
        return SaccadeOutput(logits=self.heads(self.pool(features), None), z=z, kl=z.new_zeros(batch, m),
                             glimpses=glimpses.view(batch, m, *glimpses.shape[1:]))


@register_model("ips")
def build_ips(config: ModelConfig) -> IterativePatchSelection:
    return IterativePatchSelection(config)
