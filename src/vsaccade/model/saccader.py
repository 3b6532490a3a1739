"""The Variational Saccading model: proxy encoder -> (location posterior/prior -> glimpse sampler -> glimpse
encoder -> recurrent core) x T -> classifier.

Per image, with e = ProxyEncoder(x~) computed once:
    for t = 1..T:  z_t ~ q(z_t | e, h_{t-1})       (or the prior, or uniform, or the posterior mode)
                   g_t = crop(x; z_t)                (W x W, from the large image)
                   f_t = GlimpseEncoder(g_t)
                   h_t = RNN([e, f_t, embed(z_t)], h_{t-1})
    p(y | f_1..f_T, h_T) = Classifier(mean_t f_t, h_T)   (count heads with readout=count: sum_t count(f_t);
                                                          class heads with readout=any: from p(y | g_t), t = 1..T)
Shapes follow (B, T, C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import torch
from torch import nn
from torch.distributions import ContinuousBernoulli
import torch.nn.functional as F

from ..config import ConfigError, ModelConfig
from ..geometry import cell_centres_normalised, cell_half_extent_normalised
from .classifier import Classifier, GlimpseHeads, any_object_log_probs
from .core import RecurrentCore
from .glimpse_encoder import GlimpseEncoder
from .glimpse_sampler import sample_glimpses
from .noise import Noise, resolve_noise
from .locations import GaussianLocations, MixtureLocations, proxy_centroid_offsets, proxy_location_prior
from .proxy_attention import ProxyAttention
from .proxy_encoder import ProxyEncoder
from .registry import register_model

SOURCES = ("posterior", "prior", "random", "grid")
# ModelConfig.location_policy -> what the model's own glimpses are, in training and at test (source, sample):
# the ablations of docs/benchmarks/comparison.md. "mode" is deterministic (the posterior mode, no sampling, and no
# score-function term for the cell); train it with beta=0 for "deterministic locations, no KL".
LOCATION_POLICIES = {"learned": None, "random": ("random", True), "prior": ("prior", True), "grid": ("grid", False),
                     "mode": ("posterior", False)}


@dataclass
class SaccadeOutput:
    logits: dict  # head -> (B, classes)
    z: torch.Tensor  # (B, T, 3) latents (s, u, v)
    kl: torch.Tensor  # (B, T)
    glimpses: torch.Tensor  # (B, T, C, W, W)
    log_q_cells: torch.Tensor | None = None  # (B, T) log q(c_t) of the chosen cells (mixture posterior)
    reconstruction: torch.Tensor | None = None  # (B, T) log p(x~ | z_t, h_{t-1})
    glimpse_logits: dict | None = None  # head -> (B, T, classes), what each glimpse alone says (glimpse_heads)
    proxy_logits: dict | None = None  # head -> (B, classes), the proxy attention classifier (proxy_attention)
    attention_entropy: torch.Tensor | None = None  # (B,) entropy of an attention over cells (ats), for its regulariser
    glimpse_counts: dict | None = None  # count head -> (B, T), what each glimpse counted (readout="count")
    cell_log_probs: torch.Tensor | None = None  # (B, T, c^2) log q(c_t) of every cell (mixture posterior)
    box_glimpse_logits: dict | None = None  # head -> (B, 1, classes), the glimpse heads on the `box_z` windows
    cells: torch.Tensor | None = None  # (B, T) the chosen cells (mixture posterior)


def check_inputs(c: ModelConfig, images, proxy, proxy_mask) -> None:
    """The (B, C', P, P) proxy, (B, P, P) mask and B images of c.image_channels every location model takes."""
    expected = (len(images), c.proxy_channels, c.proxy_size, c.proxy_size)
    if tuple(proxy.shape) != expected:
        raise ValueError(f"proxy must have shape (B, C', P, P) = {expected}, got {tuple(proxy.shape)}")
    if tuple(proxy_mask.shape) != (len(images), c.proxy_size, c.proxy_size):
        raise ValueError(f"proxy_mask must have shape {(len(images), c.proxy_size, c.proxy_size)}, got {tuple(proxy_mask.shape)}")
    for image in images:
        if image.channels != c.image_channels:
            raise ValueError(f"model expects {c.image_channels}-channel images, got {image.channels} channels")


class VariationalSaccader(nn.Module):
    reference_sources = ("random", "prior")  # other glimpse sources evaluation compares against

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.location_cells > config.proxy_size:
            raise ConfigError(f"location_cells ({config.location_cells}) cannot exceed proxy_size ({config.proxy_size})")
        if config.readout == "any":
            config.check_background()
        self.config = config
        c = config
        self.proxy_encoder = ProxyEncoder(c.proxy_channels, c.proxy_size, c.location_cells, c.proxy_width, c.hidden,
                                          c.proxy_encoder)
        if c.proxy_attention and c.posterior != "mixture":
            raise ConfigError("proxy_attention needs the mixture posterior")
        self.proxy_attention = ProxyAttention(c.proxy_channels, c.proxy_size, c.location_cells, c.proxy_width, c.heads) if c.proxy_attention else None
        if c.posterior == "mixture":
            self.locations = MixtureLocations(c.hidden, c.proxy_width, c.location_cells, c.s_min, c.s_max, c.proxy_prior_weight,
                                              c.cell_score_width, c.offset_prior_sees_cell)
        else:
            self.locations = GaussianLocations(c.hidden, c.s_min, c.s_max, c.prior_sees_proxy)
        self.glimpse_encoder = GlimpseEncoder(c.image_channels, c.glimpse_size, c.glimpse_width, c.hidden, c.glimpse_pool)
        self.core = RecurrentCore(c.hidden, c.rnn, c.core_sees_glimpses)
        self.classifier = Classifier(c.hidden, c.heads, c.readout)
        self.glimpse_heads = GlimpseHeads(c.hidden, c.heads) if c.glimpse_heads else None
        self.reader = (GlimpseEncoder(c.image_channels, c.glimpse_size, c.glimpse_width, c.hidden, c.glimpse_pool)
                       if c.separate_reader else None)
        if c.reconstruct_proxy:
            self.decoder = nn.Sequential(
                nn.Linear(3 + c.hidden, c.hidden), nn.ReLU(inplace=True), nn.Linear(c.hidden, c.proxy_channels * c.proxy_size**2)
            )
        self._cell_geometry: dict = {}

    @property
    def glimpses_per_image(self) -> int:
        return self.config.glimpses

    def pixels_read(self, height: int, width: int) -> int:
        """Full-resolution pixels sampled per image (T W x W glimpses; none for the no-glimpse control)."""
        return 0 if self.config.no_glimpses else self.config.glimpses * self.config.glimpse_size**2

    def cell_geometry(self, images, device):
        """Per image: cell centres (c^2, 2) in (u, v) and half a cell (2,), cached by image shape."""
        c = self.config
        centres, halves = [], []
        for image in images:
            key = (image.height, image.width)
            if key not in self._cell_geometry:
                u, v = cell_centres_normalised(*key, c.proxy_size, c.location_cells)
                half = cell_half_extent_normalised(*key, c.proxy_size, c.location_cells)
                self._cell_geometry[key] = (torch.stack([u.flatten(), v.flatten()], -1), torch.tensor(half))
            centre, half = self._cell_geometry[key]
            centres.append(centre)
            halves.append(half)
        return torch.stack(centres).to(device), torch.stack(halves).float().to(device)

    def random_z(self, noise: Noise) -> torch.Tensor:
        r = noise.uniform(3)
        c = self.config
        return torch.stack([c.s_min + (c.s_max - c.s_min) * r[:, 0], 2 * r[:, 1] - 1, 2 * r[:, 2] - 1], -1)

    def grid_z(self, batch: int, device) -> torch.Tensor:
        """(T, 3) fixed windows of side s_max: the centre for T = 1, else a ceil(sqrt(T)) x ceil(sqrt(T)) grid's
        first T cells, row by row."""
        c = self.config
        side = math.ceil(math.sqrt(c.glimpses))
        ticks = torch.arange(side, dtype=torch.float32, device=device)
        ticks = (2 * ticks + 1) / side - 1  # cell centres in [-1, 1]
        v, u = torch.meshgrid(ticks, ticks, indexing="ij")
        uv = torch.stack([u.flatten(), v.flatten()], -1)[: c.glimpses]
        return torch.cat([uv.new_full((c.glimpses, 1), c.s_max), uv], -1)[None].expand(batch, -1, -1)

    def forward(self, images, proxy, proxy_mask, source: str = "posterior", sample: bool = True,
                noise: Noise | None = None, box_z: torch.Tensor | None = None) -> SaccadeOutput:
        """images: B LargeImages; proxy (B, C', P, P); proxy_mask (B, P, P) bool.

        source: where z_t comes from ("posterior", "prior", "random" uniform or "grid" fixed); sample=False takes
        the mode. A model trained with a `location_policy` other than "learned" always looks that way.
        noise: where random draws come from (model/noise.py); default torch's global generator.
        box_z: (B, 3) windows (objective.box_windows) read only by the per-glimpse heads, for box supervision.
        """
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        fixed_policy = LOCATION_POLICIES[self.config.location_policy]
        if fixed_policy is not None and source == "posterior":
            source, sample = fixed_policy
        check_inputs(self.config, images, proxy, proxy_mask)
        c, batch, device = self.config, len(images), proxy.device
        noise = resolve_noise(noise, batch, device)
        cell_mask = F.adaptive_max_pool2d(proxy_mask[:, None].float(), c.location_cells)[:, 0] > 0
        features, e = self.proxy_encoder(proxy, cell_mask)
        state = self.core.initial(e)
        mixture = c.posterior == "mixture"
        proxy_logits = None
        if mixture:
            valid = cell_mask.flatten(1)
            visited = torch.zeros_like(valid)
            if self.proxy_attention is not None:
                log_attention, proxy_logits = self.proxy_attention(proxy, valid)
                anchor = log_attention.detach()  # see model/proxy_attention.py
            else:
                anchor = proxy_location_prior(proxy, c.location_cells, valid)
            centres, half_cell = self.cell_geometry(images, device)
            keys = self.locations.cell_keys(features)
            centroids = proxy_centroid_offsets(proxy * proxy_mask[:, None], c.location_cells) if c.proxy_centroid else None
            if c.inhibit_window:  # where each cell's glimpse would be centred before any learned offset
                targets = centres + (centroids if centroids is not None else 0) * half_cell[:, None]
                # half a window's side in (u, v) units is s * half_side_per_s (u spans 2 across the width)
                half_side_per_s = torch.tensor([[min(i.height, i.width) / i.width, min(i.height, i.width) / i.height]
                                                for i in images], device=device)

        zs, kls, log_qs, cell_log_probs, cells, feats, read_feats, glimpses, recons = [], [], [], [], [], [], [], [], []
        for _ in range(c.glimpses):
            h = self.core.output(state)
            log_q = None
            if source == "random":
                z, kl = self.random_z(noise), torch.zeros(batch, device=device)
            elif source == "grid":
                z, kl = self.grid_z(batch, device)[:, len(zs)], torch.zeros(batch, device=device)
            elif mixture:
                allowed = valid & ~visited
                allowed = torch.where(allowed.any(1, keepdim=True), allowed, valid)  # every cell seen: allow all
                step = self.locations(features, keys, h, anchor, allowed, centres, half_cell, source, sample, noise, centroids)
                z, kl, log_q = step.z, step.kl, step.log_q_cell if sample else None  # argmax: no score function
                if step.cell_log_probs is not None:
                    cell_log_probs.append(step.cell_log_probs)
                cells.append(step.cell)
                if c.inhibition_of_return:
                    visited = visited.scatter(1, step.cell[:, None], True)
                if c.inhibit_window:  # and every cell whose glimpse would land inside this window
                    reach = (z[:, :1] * half_side_per_s)[:, None]
                    visited = visited | ((targets - z[:, None, 1:]).abs() < reach).all(-1)
            else:
                step = self.locations(e, h, source, sample, noise)
                z, kl = step.z, step.kl
            zs.append(z)  # what the objective sees (window_loss); what is read below may be detached from it
            if c.detach_windows:
                z = z.detach()
            if c.reconstruct_proxy:
                logits = self.decoder(torch.cat([z, h], -1)).view_as(proxy)
                log_p = ContinuousBernoulli(logits=logits).log_prob(proxy) * proxy_mask[:, None]
                recons.append(log_p.flatten(1).sum(1))
            if c.no_glimpses:  # the control: nothing is read, exactly as if the glimpse features were zeroed
                glimpse = proxy.new_zeros(batch, c.image_channels, c.glimpse_size, c.glimpse_size)
                f = read = proxy.new_zeros(batch, c.hidden)
            else:
                glimpse = sample_glimpses(images, z, c.glimpse_size)
                f = self.glimpse_encoder(glimpse)
                read = self.reader(glimpse) if self.reader is not None else f
            read_feats.append(read)  # what the per-glimpse heads see
            if c.estimator == "ats" and log_q is not None:
                f = f * torch.exp(log_q - log_q.detach())[:, None]  # value 1, gradient d log q
            state = self.core(e, f, z, state)
            kls.append(kl), feats.append(f), glimpses.append(glimpse)
            if log_q is not None:
                log_qs.append(log_q)

        logits, glimpse_counts = self.classifier(torch.stack(feats, 1), self.core.output(state))
        glimpse_logits = self.glimpse_heads(torch.stack(read_feats, 1)) if self.glimpse_heads is not None else None
        if c.readout == "any":  # class heads that hold the background class: read from the per-glimpse heads
            logits = {**logits, **{h["name"]: any_object_log_probs(glimpse_logits[h["name"]], h["classes"].index(c.background))
                                   for h in c.heads if h["kind"] == "class" and c.background in h.get("classes", ())}}
        box_glimpse_logits = None
        if box_z is not None:
            if self.glimpse_heads is None:
                raise ConfigError("box windows are read by the per-glimpse heads: build the model with glimpse_heads=True")
            reader = self.reader if self.reader is not None else self.glimpse_encoder
            box_features = reader(sample_glimpses(images, box_z.to(device), c.glimpse_size))
            box_glimpse_logits = self.glimpse_heads(box_features[:, None])
        return SaccadeOutput(
            logits=logits,
            z=torch.stack(zs, 1),
            kl=torch.stack(kls, 1),
            glimpses=torch.stack(glimpses, 1),
            log_q_cells=torch.stack(log_qs, 1) if log_qs else None,
            reconstruction=torch.stack(recons, 1) if recons else None,
            glimpse_logits=glimpse_logits,
            proxy_logits=proxy_logits,
            glimpse_counts=glimpse_counts or None,
            cell_log_probs=torch.stack(cell_log_probs, 1) if cell_log_probs else None,
            box_glimpse_logits=box_glimpse_logits,
            cells=torch.stack(cells, 1) if cells else None,
        )


@register_model("saccader")
def build_saccader(config: ModelConfig) -> VariationalSaccader:
    return VariationalSaccader(config)
