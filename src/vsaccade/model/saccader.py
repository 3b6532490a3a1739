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

import torch
from torch import nn
import torch.nn.functional as F

from ..config import ConfigError, ModelConfig
from .classifier import AnyObjectReadout, Classifier, GlimpseHeads, NoGlimpseHeads, PooledReadout, any_object_heads
from .core import RecurrentCore
from .glimpse_encoder import GLIMPSE_ENCODERS, GlimpseEncoder
from .locations import GaussianLocations, MixtureLocations
from .noise import Noise, resolve_noise
from .proxy_attention import ProxyAttention
from .proxy_decoder import NoDecoder, ProxyDecoder
from .proxy_encoder import ProxyEncoder
from .proxy_padding import PROXY_PADDINGS
from .readers import GlimpseReader, NoGlimpses
from .registry import register_model
from .search import (AttentionAnchor, CellGeometry, GaussianSearch, GridSearch, IntensityAnchor, Look, MixtureSearch,
                     NoAnchor, RandomSearch)
from .wrappers import CELL_ESTIMATORS, WINDOW_GRADIENTS

SOURCES = ("posterior", "prior", "random", "grid")
# ModelConfig.policy -> what the model's own glimpses are, in training and at test (source, sample):
# the ablations of docs/benchmarks/comparison.md. "mode" is deterministic (the posterior mode, no sampling, and no
# score-function term for the cell); train it with beta=0 for "deterministic locations, no KL".
LOCATION_POLICIES = {"learned": None, "random": ("random", True), "prior": ("prior", True), "grid": ("grid", False),
                     "mode": ("posterior", False)}


@dataclass
class SaccadeOutput:
    logits: dict  # head -> (B, classes)
    z: torch.Tensor  # (B, T, 3) latents (s, u, v)
    kl: torch.Tensor | None  # (B, T); None from a call with kl=False
    glimpses: torch.Tensor  # (B, T, C, W, W)
    log_q_cells: torch.Tensor | None = None  # (B, T) log q(c_t) of the chosen cells (mixture posterior)
    reconstruction: torch.Tensor | None = None  # (B, T) log p(x~ | z_t, h_{t-1})
    glimpse_logits: dict | None = None  # head -> (B, T, classes), what each glimpse alone says (glimpse_heads)
    proxy_logits: dict | None = None  # head -> (B, classes), the proxy attention classifier (anchor=attention)
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


def stack_steps(values: list) -> torch.Tensor | None:
    """Stack per-step tensors on dim 1 (B, T, ...); None where the steps carry none."""
    return torch.stack(values, 1) if values and values[0] is not None else None


class VariationalSaccader(nn.Module):
    """Built from parts (`__init__`: the fields of kind *part*, docs/configuration.md); the other fields become the
    settings the `config` setter applies: the fixed location policy, how a search looks (inhibition, centroid), the
    readout and the wrappers."""

    reference_sources = ("random", "prior")  # other glimpse sources evaluation compares against

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.location_cells > config.proxy_size:
            raise ConfigError(f"location_cells ({config.location_cells}) cannot exceed proxy_size ({config.proxy_size})")
        if config.anchor in ("attention", "presence") and config.locator != "mixture":
            raise ConfigError(f"anchor={config.anchor} needs locator=mixture")
        c = config
        self.proxy_encoder = ProxyEncoder(c.proxy_channels, c.proxy_size, c.location_cells, c.proxy_width, c.hidden,
                                          c.proxy_encoder)
        mixture = c.locator == "mixture"
        background = any_object_heads(c.heads, c.background) if c.anchor == "presence" else None
        self.anchor = (AttentionAnchor(ProxyAttention(c.proxy_channels, c.proxy_size, c.location_cells, c.proxy_width, c.heads,
                                                      background, c.anchor_network))
                       if c.anchor in ("attention", "presence") else IntensityAnchor(c.location_cells) if mixture else NoAnchor())
        self.locations = (MixtureLocations(c.hidden, c.proxy_width, c.location_cells, c.s_min, c.s_max, c.anchor_weight,
                                           c.cell_score_width, c.offset_prior_sees_cell, c.offset_reach) if mixture
                          else GaussianLocations(c.hidden, c.s_min, c.s_max, c.prior_sees_proxy))
        self.reader = (NoGlimpses(c.image_channels, c.glimpse_size, c.hidden) if c.reader == "none" else
                       GlimpseReader(GlimpseEncoder(c.image_channels, c.glimpse_size, c.glimpse_width, c.hidden, c.glimpse_pool),
                                     c.glimpse_size))
        self.core = RecurrentCore(c.hidden, c.rnn, c.core_sees_glimpses)
        self.classifier = Classifier(c.hidden, c.heads, c.readout,
                                     frozenset(any_object_heads(c.heads, c.background)) if c.readout == "any" else frozenset())
        self.glimpse_heads = GlimpseHeads(c.hidden, c.heads) if c.glimpse_heads else NoGlimpseHeads()
        if c.reader == "separate":  # built here, after the heads, as before: the same initial weights
            self.reader.separate = GLIMPSE_ENCODERS[c.reader_encoder](c.image_channels, c.glimpse_size, c.glimpse_width,
                                                                      c.hidden, c.glimpse_pool)
        self.decoder = ProxyDecoder(c.hidden, c.proxy_channels, c.proxy_size) if c.decoder == "proxy" else NoDecoder()
        self.cell_geometry = CellGeometry(c.proxy_size, c.location_cells)
        self.config = config

    @property
    def config(self) -> ModelConfig:
        return self._config

    @config.setter
    def config(self, config: ModelConfig) -> None:
        """The settings that do not change which modules exist; set again when a trained model's test-time
        settings change (checkpoint.with_test_time_settings)."""
        if config.readout == "any" or config.anchor == "presence":
            config.check_background()
        untrained = {h["name"] for h in config.heads if h["kind"] != "count"} - set(self.classifier.heads)
        if config.readout != "any" and untrained:
            raise ConfigError(f"readout {config.readout!r} needs classifier heads {sorted(untrained)}, which a model built "
                              "with readout=any does not have")
        self._config = config
        self.fixed_policy = LOCATION_POLICIES[config.policy]
        self.proxy_padding = PROXY_PADDINGS[config.proxy_padding]()  # no parameters: a trained model can change it
        self.look = Look(inhibit=tuple(rule for rule in config.inhibit.split("+") if rule != "none"),
                         centroid=config.centroid, shift=tuple(float(x) for x in config.window_shift))
        self.readout = AnyObjectReadout(config.heads, config.background) if config.readout == "any" else PooledReadout()
        self.window_gradient = WINDOW_GRADIENTS[config.window_gradient]
        self.cell_gradient = CELL_ESTIMATORS[config.estimator]
        self.locations.s_min, self.locations.s_max = config.s_min, config.s_max
        if isinstance(self.locations, MixtureLocations):
            self.locations.proxy_prior_weight = config.anchor_weight

    @property
    def glimpses_per_image(self) -> int:
        return self.config.glimpses

    def policy(self, source: str, sample: bool) -> tuple[str, bool]:
        """The (source, sample) a call looks with: as asked, unless the model was trained with a fixed
        `policy`, which replaces the posterior."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        return self.fixed_policy if self.fixed_policy is not None and source == "posterior" else (source, sample)

    def begin_search(self, images, proxy, proxy_mask, cell_mask, features, e, anchor, source: str, sample: bool, noise,
                     look: Look, kl: bool = True):
        """The search for this batch's windows, by `source` (model/search.py)."""
        c = self.config
        if source == "random":
            return RandomSearch(c.s_min, c.s_max, noise)
        if source == "grid":
            return GridSearch(c.s_max, c.glimpses)
        if isinstance(self.locations, GaussianLocations):
            return GaussianSearch(self.locations, e, source, sample, noise, kl)
        return MixtureSearch(self.locations, images, proxy, proxy_mask, cell_mask, features, anchor, self.cell_geometry,
                             look, source, sample, noise, kl)

    def forward(self, images, proxy, proxy_mask, source: str = "posterior", sample: bool = True,
                noise: Noise | None = None, box_z: torch.Tensor | None = None, look: Look | None = None,
                kl: bool = True) -> SaccadeOutput:
        """images: B LargeImages; proxy (B, C', P, P); proxy_mask (B, P, P) bool.

        source: where z_t comes from ("posterior", "prior", "random" uniform or "grid" fixed); sample=False takes
        the mode. A model trained with a `policy` other than "learned" always looks that way.
        noise: where random draws come from (model/noise.py); default torch's global generator.
        box_z: (B, 3) windows (box_supervision.box_windows) read only by the per-glimpse heads, for box supervision.
        look: inhibition rules and centroid offsets for this call (model/search.py); default the model's own.
        kl=False: a prediction's call, which the objective does not read: the prior and the KL are not computed
        (SaccadeOutput.kl is None).
        """
        source, sample = self.policy(source, sample)
        check_inputs(self.config, images, proxy, proxy_mask)
        noise = resolve_noise(noise, len(images), proxy.device)
        proxy = self.proxy_padding(proxy, proxy_mask)
        cell_mask = F.adaptive_max_pool2d(proxy_mask[:, None].float(), self.config.location_cells)[:, 0] > 0
        features, e = self.proxy_encoder(proxy, cell_mask)
        anchor, proxy_logits = self.anchor(proxy, cell_mask.flatten(1))
        search = self.begin_search(images, proxy, proxy_mask, cell_mask, features, e, anchor, source, sample, noise,
                                   look or self.look, kl)  # a Look is always truthy
        state, steps = self.core.initial(e), []
        for _ in range(self.config.glimpses):
            h = self.core.output(state)
            where = search.step(h)
            z = self.window_gradient(where.z)  # the objective sees where.z; what is read may be detached from it
            seen = self.reader(images, z)
            features_t = self.cell_gradient(seen.features, where.log_q_cell)
            reconstruction = self.decoder.log_prob(z, h, proxy, proxy_mask)
            state = self.core(e, features_t, z, state)
            steps.append((where, seen, features_t, reconstruction))
        return self.read_out(steps, state, proxy_logits, self.read_boxes(images, box_z, proxy.device))

    def read_boxes(self, images, box_z, device) -> dict | None:
        """Box supervision's extra glimpses (one per image at `box_z`), read by the per-glimpse heads alone."""
        if box_z is None:
            return None
        if isinstance(self.glimpse_heads, NoGlimpseHeads):
            raise ConfigError("box windows are read by the per-glimpse heads: build the model with glimpse_heads=True")
        return self.glimpse_heads(self.reader.read_only(images, box_z.to(device))[:, None])

    def read_out(self, steps, state, proxy_logits, box_glimpse_logits) -> SaccadeOutput:
        where, seen, features, reconstruction = zip(*steps)
        logits, glimpse_counts = self.classifier(torch.stack(features, 1), self.core.output(state))
        glimpse_logits = self.glimpse_heads(torch.stack([s.read for s in seen], 1))
        return SaccadeOutput(
            logits=self.readout(logits, glimpse_logits),
            z=torch.stack([w.z for w in where], 1),
            kl=stack_steps([w.kl for w in where]),
            glimpses=torch.stack([s.glimpse for s in seen], 1),
            log_q_cells=stack_steps([w.log_q_cell for w in where]),
            reconstruction=stack_steps(list(reconstruction)),
            glimpse_logits=glimpse_logits,
            proxy_logits=proxy_logits,
            glimpse_counts=glimpse_counts or None,
            cell_log_probs=stack_steps([w.cell_log_probs for w in where]),
            box_glimpse_logits=box_glimpse_logits,
            cells=stack_steps([w.cell for w in where]),
        )


def saccader_outputs(c: ModelConfig) -> set:
    """The SaccadeOutput fields a saccader built from `c` fills beyond every model's (model/registry.py)."""
    # the mixture's cell outputs, by where a model trained with this policy looks (LOCATION_POLICIES)
    cells = {"learned": {"log_q_cells", "cell_log_probs", "cells"}, "mode": {"cell_log_probs", "cells"},
             "prior": {"cells"}}.get(c.policy, set())
    given = set(cells) if c.locator == "mixture" else set()
    for field, flag in (({"glimpse_logits", "box_glimpse_logits"}, c.glimpse_heads),
                        ({"proxy_logits"}, c.anchor in ("attention", "presence")), ({"reconstruction"}, c.decoder == "proxy"),
                        ({"glimpse_counts"}, c.readout == "count")):
        given |= field if flag else set()
    return given


@register_model("saccader", outputs=saccader_outputs)
def build_saccader(config: ModelConfig) -> VariationalSaccader:
    return VariationalSaccader(config)
