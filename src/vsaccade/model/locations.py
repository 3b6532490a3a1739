"""Location posterior q(z_t | e, h_{t-1}) and learned prior p(z_t | h_{t-1}[, x~]), with torch.distributions.

Two families (`ModelConfig.locator`):

* "gaussian" (the paper's): a diagonal Normal over unconstrained a = (a_s, a_u, a_v), mapped to
  z = (s_min + (s_max - s_min) * sigmoid(a_s), tanh(a_u), tanh(a_v)). Fully reparameterised; KL in closed form.
  Its mean averages the modes of a multimodal belief, which on sparse scenes falls between objects.

* "mixture": one component per proxy cell. q(c_t) is a Categorical over the location_cells^2 cells (padding
  cells and, with inhibition of return, cells already visited are masked out), and a Normal over
  (a_s, a_du, a_dv) conditioned on the chosen cell's features gives the scale and an offset of up to `offset_reach`
  cells (default half a cell): z = (s(a_s), u_c + tanh(a_du) * reach * cell_u, v_c + tanh(a_dv) * reach * cell_v).
  The offset and scale are reparameterised. The discrete cell is not: its gradient comes from a named
  estimator, the one place this model departs from pure reparameterisation:
    - "score": the score-function (REINFORCE) estimator with a batch-mean baseline, applied in objective.py;
    - "ats": Attention Sampling's estimator, the glimpse features scaled by q(c)/stop_gradient(q(c)).
  KL: the Categorical part in closed form; the offset part in closed form given the sampled cell, so the
  expectation over cells is a one-sample Monte-Carlo estimate.
  Both q and p add `anchor_weight` x log(normalised mean proxy intensity per cell): "look where there is
  anything". The learned parts start at zero, so training starts from that proxy-derived prior.
  With `centroid`, the offset of both q and p is measured from the proxy's intensity centroid around the
  cell (the cell widened by half a cell each side) instead of the cell's centre: "look at the middle of what is
  there". An object smaller than a cell then sits near the middle of its glimpse from the first step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal, kl_divergence
import torch.nn.functional as F

MASKED = -1e9  # logit of an excluded cell (finite, so no NaN reaches gradients)
MIN_SCALE = 1e-3
# Bounds on the Normal's parameters (pre-squashing units). The squashing maps saturate well inside them
# (tanh(8) = 1 - 2e-7), so they change nothing a trained model does, but an extreme or overflowing network
# output gives a finite z, KL and gradient instead of NaN.
LOC_BOUND = 8.0
MAX_SCALE = 8.0


@dataclass
class LocationStep:
    z: torch.Tensor  # (B, 3) latent (s, u, v)
    kl: torch.Tensor | None  # (B,) KL(q || p) of this step (zero when z did not come from the posterior; None unasked)
    log_q_cell: torch.Tensor | None = None  # (B,) log q(c_t) of the chosen cell (mixture)
    cell: torch.Tensor | None = None  # (B,) chosen cell index (mixture)
    cell_log_probs: torch.Tensor | None = None  # (B, c^2) log q(c_t) of every cell (mixture posterior)


def gaussian_head(inputs: int, hidden: int) -> nn.Sequential:
    head = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 6))
    nn.init.zeros_(head[-1].weight)
    nn.init.zeros_(head[-1].bias)
    return head


INITIAL_SCALE_SHIFT = -1.0502  # softplus(-1.0502) = 0.3: at initialisation, glimpses stay near their cell's centre


def as_normal(params: torch.Tensor) -> Independent:
    """(B, 6) -> diagonal Normal over 3 dims; the second half is a pre-softplus standard deviation. Means lie in
    [-LOC_BOUND, LOC_BOUND] and standard deviations in [MIN_SCALE, MAX_SCALE]; a NaN output reads as 0 (a model
    whose weights went NaN then fails in its loss, which training skips, not inside torch.distributions)."""
    params = torch.nan_to_num(params.float(), nan=0.0)
    mean, raw_scale = params.chunk(2, dim=-1)
    scale = (F.softplus(raw_scale + INITIAL_SCALE_SHIFT) + MIN_SCALE).clamp(max=MAX_SCALE)
    # validate_args=False: the parameters are finite and in range by construction, and torch's checks cost more
    # than the distribution itself at inference
    return Independent(Normal(mean.clamp(-LOC_BOUND, LOC_BOUND), scale, validate_args=False), 1, validate_args=False)


def cell_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Finite cell logits in [MASKED, -MASKED] (NaN reads as 0), excluded cells at MASKED."""
    return torch.nan_to_num(logits.float(), nan=0.0).clamp(MASKED, -MASKED).masked_fill(~allowed, MASKED)


def categorical(logits: torch.Tensor, allowed: torch.Tensor) -> Categorical:
    return Categorical(logits=cell_logits(logits, allowed), validate_args=False)


def draw(dist: Independent, noise, sample: bool) -> torch.Tensor:
    """A reparameterised draw loc + scale * eps with eps from `noise` (model/noise.py), or the mean."""
    if not sample:
        return dist.mean
    base = dist.base_dist
    return base.loc + base.scale * noise.normal(base.loc.shape[-1]).to(base.loc.dtype)


def draw_cell(dist: Categorical, noise, sample: bool) -> torch.Tensor:
    """A cell from a Categorical by Gumbel-max with noise from `noise` (an exact sample), or its mode."""
    if not sample:
        return dist.probs.argmax(-1)
    return (dist.logits + noise.gumbel(dist.logits.shape[-1]).to(dist.logits.dtype)).argmax(-1)


def proxy_location_prior(proxy: torch.Tensor, cells: int, valid: torch.Tensor) -> torch.Tensor:
    """(B, C', P, P) proxy -> (B, cells^2) log of the normalised mean intensity per cell ("how much is there?")."""
    intensity = F.adaptive_avg_pool2d(proxy.amax(1, keepdim=True), cells).flatten(1)
    intensity = (intensity + 1e-3) * valid
    return torch.log(intensity / intensity.sum(1, keepdim=True).clamp_min(1e-12) + 1e-12)


def proxy_centroid_offsets(proxy: torch.Tensor, cells: int) -> torch.Tensor:
    """(B, C', P, P) proxy -> (B, cells^2, 2) offsets (du, dv) of the intensity centroid around each cell from the
    cell's centre, in half-cells (so 1 is the cell's edge; at most 2, the widened window's edge). 0 where empty."""
    size = proxy.shape[-1]
    intensity = proxy.amax(1)  # (B, P, P)
    cell = size / cells
    pixel_centres = torch.arange(size, dtype=proxy.dtype, device=proxy.device) + 0.5
    cell_centres = (torch.arange(cells, dtype=proxy.dtype, device=proxy.device) + 0.5) * cell
    # window[k, j] = 1 where proxy pixel j lies within cell k widened by half a cell on each side
    window = ((pixel_centres[None] - cell_centres[:, None]).abs() < cell).to(proxy.dtype)  # (cells, P)
    mass = window @ intensity @ window.T  # (B, cells, cells)
    x_moment = window @ intensity @ (window * pixel_centres).T
    y_moment = (window * pixel_centres) @ intensity @ window.T
    safe = mass.clamp_min(1e-6)
    du = torch.where(mass > 1e-6, x_moment / safe - cell_centres[None, None, :], torch.zeros_like(mass))
    dv = torch.where(mass > 1e-6, y_moment / safe - cell_centres[None, :, None], torch.zeros_like(mass))
    return torch.stack([du, dv], -1).flatten(1, 2) / (cell / 2)


class GaussianLocations(nn.Module):
    def __init__(self, hidden: int, s_min: float, s_max: float, prior_sees_proxy: bool):
        super().__init__()
        self.s_min, self.s_max = s_min, s_max
        self.prior_sees_proxy = prior_sees_proxy
        self.posterior = gaussian_head(2 * hidden, hidden)
        self.prior = gaussian_head((2 if prior_sees_proxy else 1) * hidden, hidden)

    def to_z(self, a: torch.Tensor) -> torch.Tensor:
        s = self.s_min + (self.s_max - self.s_min) * torch.sigmoid(a[:, 0])
        return torch.stack([s, torch.tanh(a[:, 1]), torch.tanh(a[:, 2])], dim=-1)

    def distributions(self, e, h):
        q = as_normal(self.posterior(torch.cat([e, h], -1)))
        p = as_normal(self.prior(torch.cat([h, e], -1) if self.prior_sees_proxy else h))
        return q, p

    def forward(self, e, h, source: str, sample: bool, noise, kl: bool = True) -> LocationStep:
        q, p = self.distributions(e, h)
        dist = q if source == "posterior" else p
        a = draw(dist, noise, sample)
        if source != "posterior":
            return LocationStep(self.to_z(a), torch.zeros(len(e), device=e.device))
        return LocationStep(self.to_z(a), kl_divergence(q, p) if kl else None)


class CellMixture(Distribution):
    """The mixture location distribution: one component per proxy cell. A cell c ~ Categorical(cells), then an
    offset a = (a_s, a_du, a_dv) ~ offsets(c), a diagonal Normal conditioned on that cell's features. A value is a
    (B, 4) tensor [c, a_s, a_du, a_dv], the cell index stored as a float.

    `offsets(cell)` maps (B,) cell indices to the offset Normal (batch shape (B,)); it is evaluated only at the
    cells asked for (every cell only for `entropy`), since the offset MLP is the costly part. `mixture_kl` is the KL
    estimator training uses: the categorical KL in closed form plus the offsets' KL at the sampled cell, an unbiased
    one-sample estimate of KL(q || p) when the cell is drawn from q (tests/test_model.py checks it by Monte-Carlo)."""

    arg_constraints: dict = {}
    has_rsample = False  # only the offset is reparameterised (`draw`); the cell's gradient needs an estimator

    def __init__(self, cells: Categorical, offsets):
        self.cells = cells
        self._offsets, self._cached = offsets, (None, None)
        super().__init__(batch_shape=cells.batch_shape, event_shape=torch.Size([4]), validate_args=False)

    def offsets(self, cell: torch.Tensor) -> Independent:
        if self._cached[0] is not cell:
            self._cached = (cell, self._offsets(cell))
        return self._cached[1]

    def draw(self, noise, sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(cell (B,), offset a (B, 3)) from `noise` (model/noise.py), or the modes (the likeliest cell, its mean)."""
        cell = draw_cell(self.cells, noise, sample)
        return cell, draw(self.offsets(cell), noise, sample)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        if sample_shape != torch.Size():
            raise ValueError("CellMixture.sample draws one value per batch element (sample_shape=())")
        with torch.no_grad():
            cell = self.cells.sample()
            return torch.cat([cell[:, None].to(self.cells.logits.dtype), self.offsets(cell).sample()], -1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        cell = value[:, 0].long()
        return self.cells.log_prob(cell) + self.offsets(cell).log_prob(value[:, 1:])

    def entropy(self) -> torch.Tensor:
        """H(c) + sum_c q(c) H(a | c) (evaluates the offsets at every cell)."""
        batch, count = self.cells.probs.shape
        per_cell = torch.stack([self.offsets(torch.full((batch,), k, dtype=torch.long, device=self.cells.probs.device))
                                .entropy() for k in range(count)], -1)
        return self.cells.entropy() + (self.cells.probs * per_cell).sum(-1)


def mixture_kl(q: CellMixture, p: CellMixture, cell: torch.Tensor) -> torch.Tensor:
    """(B,) KL(q(c) || p(c)) + KL(q(a | c) || p(a | c)) at the drawn cell: the KL estimator of the mixture posterior."""
    return kl_divergence(q.cells, p.cells) + kl_divergence(q.offsets(cell), p.offsets(cell))


class MixtureLocations(nn.Module):
    def __init__(self, hidden: int, feature_width: int, cells: int, s_min: float, s_max: float, proxy_prior_weight: float,
                 score_width: int = 0, prior_sees_cell: bool = False, reach: float = 0.5):
        super().__init__()
        score_width = score_width or hidden
        self.s_min, self.s_max, self.cells, self.reach = s_min, s_max, cells, reach
        self.proxy_prior_weight = proxy_prior_weight
        # Cell logits = MLP([cell features, h]). Its first layer is split into a per-cell part, computed once per
        # image (`cell_keys`), and a per-step part from h, added as a bias: the same function, T times cheaper.
        self.cell_projection = nn.Conv2d(feature_width, score_width, 1)
        self.state_projection = nn.Linear(hidden, score_width, bias=False)
        # No bias: it would shift every cell's logit alike, which no softmax sees. Its gradient is zero up to rounding,
        # and Adam turns that rounding into full-size steps of random sign.
        self.cell_score = nn.Linear(score_width, 1, bias=False)
        nn.init.zeros_(self.cell_score.weight)
        self.prior_logits = nn.Linear(hidden, cells * cells)
        nn.init.zeros_(self.prior_logits.weight)
        nn.init.zeros_(self.prior_logits.bias)
        self.posterior_offset = gaussian_head(feature_width + hidden, hidden)
        self.prior_sees_cell = prior_sees_cell
        self.prior_offset = gaussian_head(feature_width + hidden if prior_sees_cell else hidden, hidden)

    def cell_keys(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F, c, c) -> (B, c^2, score_width): the per-cell part of the posterior's cell scores, once per image."""
        return self.cell_projection(features).flatten(2).transpose(1, 2).contiguous()

    def posterior_cell_logits(self, keys: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.cell_score(F.relu(keys + self.state_projection(h)[:, None])).squeeze(-1)

    def gather_cells(self, values: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """values (B, c^2, D), cell (B,) -> (B, D): each image's row for its cell."""
        return values.gather(1, cell[:, None, None].expand(-1, 1, values.shape[-1]))[:, 0]

    def distributions(self, features, keys, h, anchor, allowed, with_prior: bool = True) -> tuple[CellMixture, CellMixture | None]:
        """The posterior q(c, a | e, h) and prior p(c, a | h[, cell features]) of one step (p is None with_prior=False)."""
        anchor = self.proxy_prior_weight * anchor
        cell_features = features.flatten(2).transpose(1, 2)  # (B, c^2, F)

        def with_cell(cell):
            return torch.cat([self.gather_cells(cell_features, cell), h], -1)

        q = CellMixture(categorical(self.posterior_cell_logits(keys, h) + anchor, allowed),
                        lambda cell: as_normal(self.posterior_offset(with_cell(cell))))
        if not with_prior:
            return q, None
        p = CellMixture(categorical(self.prior_logits(h) + anchor, allowed),
                        lambda cell: as_normal(self.prior_offset(with_cell(cell) if self.prior_sees_cell else h)))
        return q, p

    def window(self, cell, a, centres, half_cell, centroids=None) -> torch.Tensor:
        """(B,) cells and (B, 3) offsets -> (B, 3) windows z = (s, u, v): the cell's centre (or its proxy centroid)
        moved by tanh(a_du, a_dv) times `reach` cells, the side squashed into [s_min, s_max]."""
        shift = torch.tanh(a[:, 1:]) * (2 * self.reach)  # in half-cells
        if centroids is not None:
            shift = shift + self.gather_cells(centroids, cell)
        uv = (self.gather_cells(centres, cell) + shift * half_cell).clamp(-1, 1)
        return torch.cat([self.s_min + (self.s_max - self.s_min) * torch.sigmoid(a[:, :1]), uv], -1)

    def forward(self, features, keys, h, anchor, allowed, centres, half_cell, source: str, sample: bool, noise,
                centroids: torch.Tensor | None = None, kl: bool = True) -> LocationStep:
        """features (B, F, c, c); keys (B, c^2, score_width) from cell_keys; h (B, H); anchor (B, c^2) proxy prior
        logits; allowed (B, c^2) bool; centres (B, c^2, 2) cell centres (u, v); half_cell (B, 2) half a cell;
        noise: a model/noise.py Noise; centroids (B, c^2, 2) optional offsets (in half-cells) the learned offset
        is measured from. kl=False: the posterior's step without the prior (its kl is None)."""
        q, p = self.distributions(features, keys, h, anchor, allowed, with_prior=kl or source != "posterior")
        cell, a = (q if source == "posterior" else p).draw(noise, sample)
        z = self.window(cell, a, centres, half_cell, centroids)
        if source != "posterior":
            return LocationStep(z, torch.zeros(len(h), device=h.device), None, cell)
        return LocationStep(z, mixture_kl(q, p, cell) if kl else None, q.cells.log_prob(cell), cell, q.cells.logits)
