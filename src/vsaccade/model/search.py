"""Where the model looks, step by step. A search is begun once per batch of images (what is computed once per
image: cell keys, cell geometry, the anchor) and asked for one window per step (`step(h) -> LocationStep`).

Which search runs is a call argument (`source`): the learned posterior or prior (a `MixtureSearch` or a
`GaussianSearch`, from the model's locations part), uniform windows (`RandomSearch`) or a fixed grid
(`GridSearch`). Inhibition of return is a list of rules a mixture search applies after each step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..geometry import cell_centres_normalised, cell_half_extent_normalised
from .locations import LocationStep, proxy_centroid_offsets, proxy_location_prior


@dataclass(frozen=True)
class Look:
    """How a mixture search looks beyond its distributions: the inhibition rules applied after each step
    ("cell", "window"; INHIBITION_RULES), whether offsets start at the proxy's intensity centroid, and a constant
    shift (du, dv), in cells, of every window's centre."""

    inhibit: tuple = ("cell",)
    centroid: bool = False
    shift: tuple = (0.0, 0.0)


class IntensityAnchor(nn.Module):
    """The mixture's unsupervised location prior: log of the normalised proxy intensity per cell ("look where there
    is anything"). No parameters."""

    def __init__(self, cells: int):
        super().__init__()
        self.cells = cells

    def forward(self, proxy, valid) -> tuple[torch.Tensor, None]:
        return proxy_location_prior(proxy, self.cells, valid), None


class AttentionAnchor(nn.Module):
    """A proxy attention classifier's attention as the anchor (model/proxy_attention.py); its class logits go to
    the objective's proxy term. Detached as an anchor: the attention learns from that term only."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = attention

    def forward(self, proxy, valid) -> tuple[torch.Tensor, dict]:
        log_attention, proxy_logits = self.attention(proxy, valid)
        return log_attention.detach(), proxy_logits


class NoAnchor(nn.Module):
    """The Gaussian posterior takes no per-cell anchor."""

    def forward(self, proxy, valid) -> tuple[None, None]:
        return None, None


def inhibit_cell(search: MixtureSearch, step: LocationStep) -> torch.Tensor:
    """A cell chosen once is masked for the remaining steps."""
    return search.visited.scatter(1, step.cell[:, None], True)


def inhibit_window(search: MixtureSearch, step: LocationStep) -> torch.Tensor:
    """Every cell whose glimpse would be centred inside the chosen window is masked too."""
    reach = (step.z[:, :1] * search.half_side_per_s)[:, None]
    return search.visited | ((search.targets - step.z[:, None, 1:]).abs() < reach).all(-1)


INHIBITION_RULES = {"cell": inhibit_cell, "window": inhibit_window}


class CellGeometry:
    """Per image size: the location cells' centres (c^2, 2) in (u, v) and half a cell (2,), computed once."""

    def __init__(self, proxy_size: int, cells: int):
        self.proxy_size, self.cells, self._cache = proxy_size, cells, {}

    def __call__(self, images, device) -> tuple[torch.Tensor, torch.Tensor]:
        centres, halves = [], []
        for image in images:
            key = (image.height, image.width)
            if key not in self._cache:
                u, v = cell_centres_normalised(*key, self.proxy_size, self.cells)
                half = cell_half_extent_normalised(*key, self.proxy_size, self.cells)
                self._cache[key] = (torch.stack([u.flatten(), v.flatten()], -1), torch.tensor(half))
            centre, half = self._cache[key]
            centres.append(centre)
            halves.append(half)
        return torch.stack(centres).to(device), torch.stack(halves).float().to(device)


class MixtureSearch:
    """The mixture posterior's (or prior's) search over proxy cells, with inhibition of return."""

    def __init__(self, locations, images, proxy, proxy_mask, cell_mask, features, anchor, geometry: CellGeometry,
                 look, source: str, sample: bool, noise, kl: bool = True):
        self.locations, self.features, self.anchor, self.kl = locations, features, anchor, kl
        self.source, self.sample, self.noise, self.rules = source, sample, noise, [INHIBITION_RULES[r] for r in look.inhibit]
        self.valid = cell_mask.flatten(1)
        self.visited = torch.zeros_like(self.valid)
        self.centres, self.half_cell = geometry(images, proxy.device)
        self.keys = locations.cell_keys(features)
        cells = cell_mask.shape[-1]
        self.centroids = proxy_centroid_offsets(proxy * proxy_mask[:, None], cells) if look.centroid else None
        if any(look.shift):  # where each window is measured from, moved: in half-cells, as the centroids are
            moved = 2 * proxy.new_tensor(look.shift).expand(len(images), cells * cells, 2)
            self.centroids = moved if self.centroids is None else self.centroids + moved
        if "window" in look.inhibit:  # where each cell's glimpse would be centred before any learned offset
            self.targets = self.centres + (self.centroids if self.centroids is not None else 0) * self.half_cell[:, None]
            # half a window's side in (u, v) units is s * half_side_per_s (u spans 2 across the width)
            self.half_side_per_s = torch.tensor([[min(i.height, i.width) / i.width, min(i.height, i.width) / i.height]
                                                 for i in images], device=proxy.device)

    def step(self, h) -> LocationStep:
        allowed = self.valid & ~self.visited
        allowed = torch.where(allowed.any(1, keepdim=True), allowed, self.valid)  # every cell seen: allow all
        step = self.locations(self.features, self.keys, h, self.anchor, allowed, self.centres, self.half_cell,
                              self.source, self.sample, self.noise, self.centroids, self.kl)
        for rule in self.rules:
            self.visited = rule(self, step)
        if not self.sample:  # the mode: no score function for the cell
            step.log_q_cell = None
        return step


class GaussianSearch:
    def __init__(self, locations, e, source: str, sample: bool, noise, kl: bool = True):
        self.locations, self.e, self.source, self.sample, self.noise, self.kl = locations, e, source, sample, noise, kl

    def step(self, h) -> LocationStep:
        return self.locations(self.e, h, self.source, self.sample, self.noise, self.kl)


class RandomSearch:
    """Windows uniform over the image, sides uniform in [s_min, s_max]."""

    def __init__(self, s_min: float, s_max: float, noise):
        self.s_min, self.s_max, self.noise = s_min, s_max, noise

    def step(self, h) -> LocationStep:
        r = self.noise.uniform(3)
        z = torch.stack([self.s_min + (self.s_max - self.s_min) * r[:, 0], 2 * r[:, 1] - 1, 2 * r[:, 2] - 1], -1)
        return LocationStep(z, torch.zeros(len(h), device=h.device))


class GridSearch:
    """Fixed windows of side s_max: the centre for T = 1, else a ceil(sqrt(T)) x ceil(sqrt(T)) grid's first T
    cells, row by row."""

    def __init__(self, s_max: float, glimpses: int):
        side = math.ceil(math.sqrt(glimpses))
        ticks = (2 * torch.arange(side, dtype=torch.float32) + 1) / side - 1  # cell centres in [-1, 1]
        v, u = torch.meshgrid(ticks, ticks, indexing="ij")
        uv = torch.stack([u.flatten(), v.flatten()], -1)[:glimpses]
        self.windows, self.t = torch.cat([uv.new_full((glimpses, 1), s_max), uv], -1), 0

    def step(self, h) -> LocationStep:
        z = self.windows[self.t].to(h.device).expand(len(h), -1)
        self.t += 1
        return LocationStep(z, torch.zeros(len(h), device=h.device))
