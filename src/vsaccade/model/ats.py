"""Attention Sampling (Katharopoulos & Fleuret, "Processing Megapixel Images with Deep Attention-Sampling Models",
ICML 2019) in the same harness, registered as "ats"; the public reference is idiap/attention-sampling (Keras).

    a = softmax over the valid cells of A(x~)                 attention network on the proxy, (B, c^2)
    i_1..i_N ~ a, without replacement                          (Gumbel top-N: an ordered sequential draw)
    f_k = normalise(E(patch at cell i_k))                      feature network on W x W full-resolution patches
    Phi = sum_k weight_k f_k  ~=  E_{i~a}[f_i]                 the estimator below (`expectation_weights`)
    p(y | x) = softmax(Linear_head(Phi))                       one linear classifier per head

Patches are read at a fixed scale: z = (s_min, u, v) with (u, v) the sampled cell's centre, a window of s_min times
the shorter image side resampled to W x W (`s_max` is unused; the reference reads W x W pixels unresampled, which
is s_min = W / shorter side). The attention is the reference's smoothed softmax, (1 - 1e-5) a + 1e-5 / cells,
which bounds the 1/a factor in the attention gradient. The optional entropy regulariser of the reference
(`ObjectiveConfig.attention_entropy_weight`, 1e-4 in its Megapixel MNIST script) reads `attention_entropy`.

The estimator, for draws i_1..i_N in order, with a_k = a(i_k), w = 1/N and m_k = 1 - sum_{j<k} a_j the attention
mass still undrawn before draw k:

    Phi = w sum_k [ sum_{j<k} a_j f_j + m_k f_k ]           (each bracket is unbiased for E_a[f]: given the first
                                                             k-1 draws, i_k ~ a / m_k over the rest)
        = sum_k w [ m_k + (N - k) a_k ] f_k                  (k = 1..N)

This is the forward value of the reference's `_expected_without_replacement` (ats/core/expectation.py), and its
gradient with respect to the features is the same (the weights). For the attention, the gradient of the exact
expectation is d/da_i sum_i a_i f_i = f_i; differentiating each bracket with its prefix exactly and its last term
by the likelihood ratio (d a_k / (a_k / m_k)) gives the unbiased estimate

    dPhi/da_k = w [ m_k / a_k + (N - k) ] f_k,  with m_k held constant,

obtained here by autograd from weights  w [ sg(m_k) a_k / sg(a_k) + (N - k) a_k ]  (sg: stop-gradient).
The reference's custom backward uses another formula for the attention, which an exact enumeration on a 5-cell
toy shows to be biased for N >= 2 (it agrees for N = 1); we keep the unbiased one (tests/test_ats.py). With
replacement the reference's gradient w f_k / a_k is the m_k = 1, no-prefix case of the same formula.

At test time the reference samples exactly as in training (its Keras layer has no train/test switch): that is
`eval_policy="samples:1"` here (or "samples:K", averaging K draws). `sample=False` ("mode") instead takes the N
cells of highest attention, in decreasing order, with the same weights. `source="random"`, evaluation's
reference, draws N valid cells uniformly without replacement and averages their features plainly.

Where the harness's pieces stand in for the reference's Megapixel MNIST script: its attention network is two
8-channel tanh convolutions and a 1-channel one at the low-resolution view's full size, one cell per pixel (here
conv blocks of `proxy_width` down to the `location_cells` grid; location_cells = proxy_size gives a cell per proxy
pixel); its feature network is four convolutions, global max pooling and L2 normalisation (here the glimpse encoder,
`glimpse_width` / `hidden` / `glimpse_pool`, then the same normalisation).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ..config import ConfigError, ModelConfig
from ..geometry import cell_centres_normalised
from .baselines import Heads
from .glimpse_encoder import GlimpseEncoder
from .glimpse_sampler import sample_glimpses
from .noise import Noise, resolve_noise
from .proxy_encoder import conv_block, halvings
from .registry import register_model
from .saccader import SaccadeOutput, check_inputs

SOURCES = ("posterior", "random")
SMOOTHING = 1e-5  # the reference's SampleSoftmax(smooth=1e-5): attention >= 1e-5 / cells on every valid cell


def expectation_weights(attention: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """attention (B, K), rows summing to 1; cells (B, N) drawn from it without replacement, in draw order ->
    (B, N) weights such that sum_k weights_k f_k estimates E_{i~a}[f_i] without bias, in value and in gradient
    (features and attention; see the module docstring)."""
    n = cells.shape[1]
    drawn = attention.gather(1, cells)  # a_k
    with torch.no_grad():
        # Mass still undrawn before each draw, summed from the cells never drawn and the later draws rather than
        # as 1 - cumsum, which cancels badly when the first draw takes almost all the mass.
        undrawn = attention.scatter(1, cells, 0.0).sum(1, keepdim=True)
        remaining = undrawn + drawn.flip(1).cumsum(1).flip(1)
        later = torch.arange(n - 1, -1, -1, device=cells.device, dtype=attention.dtype)  # N - k for k = 1..N
    return (remaining * drawn / drawn.detach() + later * drawn) / n


def gumbel_top(log_weights: torch.Tensor, count: int, noise: Noise) -> torch.Tensor:
    """(B, K) log-probabilities (-inf: excluded) -> (B, count) cells drawn without replacement, in draw order."""
    gumbel = noise.gumbel(log_weights.shape[-1]).to(log_weights)
    return (log_weights + gumbel).topk(count, dim=1).indices


class AttentionNetwork(nn.Module):
    """proxy (B, C', P, P) -> attention logits (B, c^2): convolutions down to about the cell grid, a 1-channel
    map, averaged over each cell."""

    def __init__(self, channels: int, proxy_size: int, cells: int, width: int):
        super().__init__()
        layers = [conv_block(channels, width)] + [conv_block(width, width, stride=2) for _ in range(halvings(proxy_size, cells))]
        self.features = nn.Sequential(*layers, nn.Conv2d(width, 1, 3, padding=1))
        self.cells = cells

    def forward(self, proxy: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.features(proxy), self.cells).flatten(1)


class AttentionSampling(nn.Module):
    reference_sources = ("random",)

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        if c.location_cells > c.proxy_size:
            raise ConfigError(f"location_cells ({c.location_cells}) cannot exceed proxy_size ({c.proxy_size})")
        if c.glimpses > c.location_cells**2:
            raise ConfigError(f"ats draws glimpses={c.glimpses} distinct cells but there are only "
                              f"location_cells^2 = {c.location_cells**2}")
        if c.reader == "none":
            raise ConfigError("ats has no no-glimpse control: its only features come from the patches")
        if c.readout != "mean":
            raise ConfigError("ats has no count readout: its features are an attention-weighted mean of patches")
        self.config = config
        self.attention = AttentionNetwork(c.proxy_channels, c.proxy_size, c.location_cells, c.proxy_width)
        self.features = GlimpseEncoder(c.image_channels, c.glimpse_size, c.glimpse_width, c.hidden, c.glimpse_pool)
        self.heads = Heads(c.hidden, c.heads, c.readout)
        self._centres: dict = {}

    @property
    def glimpses_per_image(self) -> int:
        return self.config.glimpses

    def cell_centres(self, images, device) -> torch.Tensor:
        """(B, c^2, 2) cell centres (u, v) of each image, cached by image shape and grid."""
        c, centres = self.config, []
        for image in images:
            key = (image.height, image.width, c.proxy_size, c.location_cells)
            if key not in self._centres:
                u, v = cell_centres_normalised(*key)
                self._centres[key] = torch.stack([u.flatten(), v.flatten()], -1)
            centres.append(self._centres[key])
        return torch.stack(centres).to(device)

    def forward(self, images, proxy, proxy_mask, source: str = "posterior", sample: bool = True,
                noise: Noise | None = None, kl: bool = True) -> SaccadeOutput:
        """images: B LargeImages; proxy (B, C', P, P); proxy_mask (B, P, P) bool. source "posterior" draws from the
        attention (sample=False: its top N cells), "random" uniformly; noise: model/noise.py (default global)."""
        if source not in SOURCES:
            raise ValueError(f"ats accepts source in {SOURCES}, got {source!r}")
        check_inputs(self.config, images, proxy, proxy_mask)
        c, batch, n = self.config, len(images), self.config.glimpses
        noise = resolve_noise(noise, batch, proxy.device)
        valid = (F.adaptive_max_pool2d(proxy_mask[:, None].float(), c.location_cells)[:, 0] > 0).flatten(1)
        fewest = int(valid.sum(1).min())
        if fewest < n:
            raise ValueError(f"ats draws {n} patches without replacement, but an image has only {fewest} valid cells "
                             f"of {c.location_cells}^2: lower model.glimpses or raise model.location_cells")

        logits = self.attention(proxy).masked_fill(~valid, float("-inf"))
        attention = (1 - SMOOTHING) * logits.softmax(1) + SMOOTHING * valid.float() / valid.sum(1, keepdim=True)
        entropy = -torch.where(valid, attention * attention.clamp_min(1e-30).log(), 0.0).sum(1)  # padding: a = 0
        if source == "random":
            cells = gumbel_top(torch.zeros_like(attention).masked_fill(~valid, float("-inf")), n, noise)
            weights = attention.new_full((batch, n), 1 / n)
        else:
            with torch.no_grad():
                log_attention = attention.log()
                cells = gumbel_top(log_attention, n, noise) if sample else log_attention.topk(n, dim=1).indices
            weights = expectation_weights(attention, cells)

        centres = self.cell_centres(images, proxy.device).gather(1, cells[..., None].expand(-1, -1, 2))
        z = torch.cat([centres.new_full((batch, n, 1), c.s_min), centres], -1)
        glimpses = sample_glimpses([image for image in images for _ in range(n)], z.flatten(0, 1), c.glimpse_size)
        # Unit-norm features, as the reference's feature network ends: the paper shows the attention-sampled
        # estimate then has the least variance.
        features = F.normalize(self.features(glimpses), dim=-1).view(batch, n, -1)
        expectation = (weights[..., None] * features).sum(1)
        return SaccadeOutput(logits=self.heads(expectation, None), z=z, kl=z.new_zeros(batch, n),
                             glimpses=glimpses.view(batch, n, *glimpses.shape[1:]), attention_entropy=entropy)


@register_model("ats", outputs=lambda config: {"attention_entropy"})
def build_ats(config: ModelConfig) -> AttentionSampling:
    return AttentionSampling(config)
