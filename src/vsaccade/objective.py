"""The objective: the negative ELBO of method.md, per image,

    loss = -log p(y | g_1..g_T, x~) + beta * sum_t KL(q(z_t | e, h_{t-1}) || p(z_t | h_{t-1}))
           - reconstruction_weight * mean_t log p(x~ | z_t, h_{t-1})          (optional)

with one reparameterised sample of z. `combine="product"` reproduces the reference code instead:
nll * (beta * KL - reconstruction_weight * log p(x~ | ...)), per sample.

For the mixture posterior's discrete cell with the "score" estimator, a surrogate term
-(ELBO_i - mean_batch ELBO) * sum_t log q(c_t) (the ELBO_i detached) adds the score-function gradient;
it is zero in expectation and is left out of the reported ELBO.

Per-glimpse terms (need `ModelConfig.glimpse_heads`; both default off, and neither is part of the ELBO):
  * glimpse_loss_weight * mean_t -log p_t(y | g_t): trains heads that read each glimpse alone (and, through
    them, the glimpse encoder);
  * glimpse_reward_weight: a per-step score-function term, -(r_t - mean_batch r_t) * log q(c_t) with
    r_t = log p_t(y | g_t) detached. It credits each cell choice with what its own glimpse showed, instead of
    crediting all T choices with one sequence-level reward: far lower variance, but a biased (myopic)
    estimate of the ELBO's gradient, a shaping reward we name rather than hide.

proxy_loss_weight * -log p(y | x~) (needs `ModelConfig.proxy_attention`, also outside the ELBO) trains the
proxy attention classifier whose attention is the location anchor (model/proxy_attention.py).

location_weight * -log q(c_1 in C_boxes) (outside the ELBO, and outside the paper's method: it needs object boxes,
which the method never sees) is box supervision of the first glimpse's cell, where C_boxes are the cells holding a
box centre (`box_cells`); samples without a box add nothing. search_weight extends it to the later glimpses
(`search_loss`): while no earlier glimpse's cell holds a box centre, glimpse t is trained towards one among the
cells still allowed, so a first glimpse on a decoy is followed by one on the sign. A named variant for data that
has boxes, reported as such (docs/benchmarks/files.md), never as the weakly supervised method. Its companion
box_glimpse_weight * -log p_t(y | g_box) trains the per-glimpse heads (and the glimpse encoder) on one extra
glimpse per image at its box (`box_windows`; a random window where there is none), so the reader learns what a sign
says before the posterior reliably finds one. With box_window_scale k, a box's window is fitted to it (`fitted_windows`: centred on it, k times
its side), the box glimpses are drawn around that window, and window_weight * the squared error of the first window
to it (`window_loss`; where c_1 holds the box centre) trains the first glimpse's offset and side as well as its
cell: a small object is then read magnified, at about the same size in the glimpse as a large one.

attention_entropy_weight * -mean H(a) (outside the ELBO; needs a model that reports `attention_entropy`, i.e. "ats")
is Attention Sampling's entropy regulariser: a positive weight keeps its attention from collapsing early
(model/ats.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .config import ObjectiveConfig
from .geometry import cells_of_points, centre_normalised


def log_likelihood(logits: dict, labels: dict, heads: list[dict]) -> torch.Tensor:
    """Sum over heads of log p(y_head | ...): logits (B, [T,] classes) -> (B, [T]). Labels (B[, classes])
    broadcast over the optional glimpse axis T."""
    total = 0
    for head in heads:
        head_logits, y = logits[head["name"]], labels[head["name"]]
        if head["kind"] == "multilabel":
            y = y.float()[:, None].expand_as(head_logits) if head_logits.ndim == 3 else y.float()
            total = total - F.binary_cross_entropy_with_logits(head_logits, y, reduction="none").sum(-1)
        else:
            if head_logits.ndim == 3:
                y = y[:, None].expand(head_logits.shape[:2])
                total = total - F.cross_entropy(head_logits.transpose(1, 2), y, reduction="none")
            else:
                total = total - F.cross_entropy(head_logits, y, reduction="none")
    return total


def beta_at(config: ObjectiveConfig, epoch_progress: float) -> float:
    """The KL weight after `epoch_progress` epochs (linear warm-up, then constant)."""
    if config.beta_warmup_epochs <= 0:
        return config.beta
    return config.beta * min(1.0, epoch_progress / config.beta_warmup_epochs)


def local_mean(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return values.detach().mean(dim, keepdim=True)


def box_cells(images: list, boxes: list, proxy_size: int, cells: int, device=None) -> torch.Tensor:
    """(B, cells^2) bool: the cells (of the location grid over the proxy) that hold the centre of one of each
    image's boxes. images: B LargeImages; boxes: B tensors (N_b, 4) in pixels."""
    targets = torch.zeros(len(images), cells * cells, dtype=torch.bool)
    for row, (image, image_boxes) in enumerate(zip(images, boxes)):
        if len(image_boxes):
            x, y = (image_boxes[:, 0] + image_boxes[:, 2]) / 2, (image_boxes[:, 1] + image_boxes[:, 3]) / 2
            targets[row, cells_of_points(x, y, image.height, image.width, proxy_size, cells)] = True
    return targets.to(device)


class FittedWindows(NamedTuple):
    z: torch.Tensor  # (B, 3) window (s, u, v) fitted to each image's first box (zeros without one)
    side_uv: torch.Tensor  # (B, 2) that window's side in u and in v units (u and v span 2 across the image)
    present: torch.Tensor  # (B,) bool: the image has a box


def fitted_windows(images: list, boxes: list, scale: float, s_min: float, s_max: float) -> FittedWindows:
    """The window that frames each image's first box: centred on it, `scale` times its longer side, the side
    clamped to [s_min, s_max]. images: B LargeImages; boxes: B tensors (N_b, 4) in pixels."""
    z, side_uv = torch.zeros(len(images), 3), torch.ones(len(images), 2)
    present = torch.tensor([len(b) > 0 for b in boxes], dtype=torch.bool)
    for row, (image, image_boxes) in enumerate(zip(images, boxes)):
        if len(image_boxes):
            x0, y0, x1, y1 = image_boxes[0].tolist()
            short = min(image.height, image.width)
            s = min(max(scale * max(x1 - x0, y1 - y0) / short, s_min), s_max)
            u, v = centre_normalised(torch.tensor((x0 + x1) / 2), torch.tensor((y0 + y1) / 2), image.height, image.width)
            z[row] = torch.stack([torch.tensor(s), u, v])
            side_uv[row] = torch.tensor([2 * s * short / image.width, 2 * s * short / image.height])
    return FittedWindows(z, side_uv, present)


# Box glimpses around a fitted window (box_windows with `scale`): the side varies by a factor of up to e^0.2 each way
# and the centre by up to 0.2 of the side each way, so the heads learn to read what a trained first window shows
# (a sign still whole inside a 2.5x window shifted by 0.2: (2.5 - 1) / 2 / 2.5 = 0.3 of the side is its margin).
FITTED_SIDE_SPREAD = 0.2
FITTED_CENTRE_SHIFT = 0.2


def box_windows(images: list, boxes: list, s_min: float, s_max: float, cell_fraction: float, noise,
                fitted: FittedWindows | None = None) -> torch.Tensor:
    """(B, 3) windows z = (s, u, v), one per image: on its first box, of a side drawn uniformly in [s_min, s_max]
    and its centre moved by up to `cell_fraction` of the image's longer side each way (a learned glimpse is that
    far off-centre); uniform over the image where there is no box. Given `fitted` (`fitted_windows`), a box's
    window is instead its fitted window varied by FITTED_SIDE_SPREAD and FITTED_CENTRE_SHIFT. Draws come from
    `noise` (model/noise.py)."""
    draws = noise.uniform(3).cpu()
    s = s_min + (s_max - s_min) * draws[:, 0]
    uv = 2 * draws[:, 1:] - 1  # uniform over the image; on the box, the same draws are the jitter
    for row, (image, image_boxes) in enumerate(zip(images, boxes)):
        if len(image_boxes):
            x0, y0, x1, y1 = image_boxes[0]
            if fitted is not None:
                s[row] = (fitted.z[row, 0] * torch.exp((2 * draws[row, 0] - 1) * FITTED_SIDE_SPREAD)).clamp(s_min, s_max)
                reach = FITTED_CENTRE_SHIFT * s[row] * min(image.height, image.width)
            else:
                reach = cell_fraction * max(image.height, image.width)
            x, y = (x0 + x1) / 2 + uv[row, 0] * reach, (y0 + y1) / 2 + uv[row, 1] * reach
            uv[row] = torch.stack(centre_normalised(x, y, image.height, image.width))
    return torch.cat([s[:, None], uv.clamp(-1, 1)], 1)


def box_supervision(images: list, boxes: list, model_config, config: ObjectiveConfig, noise, device=None):
    """What the objective's box terms need for one batch, each None where no term asks for it: the box glimpses'
    windows (box_glimpse_weight; the model's `box_z`), the box cells (location_weight, search_weight, window_weight)
    and the fitted windows (box_window_scale)."""
    c = model_config
    fitted = fitted_windows(images, boxes, config.box_window_scale, c.s_min, c.s_max) if config.box_window_scale else None
    box_z = box_windows(images, boxes, c.s_min, c.s_max, 0.5 / c.location_cells, noise, fitted) if config.box_glimpse_weight else None
    targets = box_cells(images, boxes, c.proxy_size, c.location_cells, device) if config.needs_box_cells else None
    return box_z, targets, fitted


def location_loss(cell_log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(..., c^2) log q(c), (..., c^2) bool targets (broadcast) -> (...) -log q(c in targets), 0 where a sample
    has none."""
    targets = targets.expand_as(cell_log_probs)
    chosen = torch.logsumexp(cell_log_probs.masked_fill(~targets, -1e9), -1)  # finite, so rows without targets stay NaN-free
    return torch.where(targets.any(-1), -chosen, torch.zeros_like(chosen))


def search_loss(cell_log_probs: torch.Tensor, cells: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T, c^2) log q(c_t), (B, T) chosen cells, (B, c^2) bool targets -> (B,) the location loss of every glimpse
    after the first while no earlier glimpse's cell holds a box centre: the later glimpses are trained to search on,
    towards the box among the cells still allowed. Steps where inhibition has masked every box cell add nothing."""
    hits = targets.gather(1, cells).long()  # (B, T): glimpse t's cell holds a box centre
    searching = (hits.cumsum(1) - hits)[:, 1:] == 0  # no earlier glimpse's did
    per_step = location_loss(cell_log_probs[:, 1:], targets[:, None])  # (B, T - 1)
    reachable = per_step < 1e8  # a masked cell's log q is about MASKED (-1e9)
    return torch.where(searching & reachable, per_step, torch.zeros_like(per_step)).sum(1)


def window_loss(z: torch.Tensor, fitted: FittedWindows, mask: torch.Tensor) -> torch.Tensor:
    """(B, 3) windows, their fitted windows, (B,) bool -> (B,) squared error where mask holds, else 0: the centre's
    offset in units of the fitted side, plus the log of the sides' ratio, squared. Scale-free, so a small object's
    window is held as tightly (relative to its side) as a large one's."""
    fitted_z = fitted.z.to(z.device)
    centre = ((z[:, 1:] - fitted_z[:, 1:]) / fitted.side_uv.to(z.device)).square().sum(1)
    side = torch.log(z[:, 0] / fitted_z[:, 0].clamp_min(1e-6)).square()
    return torch.where(mask, centre + side, torch.zeros_like(centre))


def negative_elbo(output, labels: dict, heads: list[dict], config: ObjectiveConfig, beta: float, estimator: str = "score",
                  batch_mean=local_mean, location_targets: torch.Tensor | None = None,
                  fitted: FittedWindows | None = None) -> dict:
    """Loss to minimise (scalar) and its per-sample parts, from a SaccadeOutput. `batch_mean(values, dim)` gives
    the score-function baselines (a keepdim mean over the batch): over all ranks' samples in distributed
    training (distributed.Cluster.mean), so the loss does not depend on how the batch is split.
    location_targets (B, c^2) bool from `box_cells`: needed with location_weight, search_weight and window_weight;
    fitted (`fitted_windows`): needed with window_weight."""
    log_lik = log_likelihood(output.logits, labels, heads)
    kl = output.kl.sum(1)
    recon = output.reconstruction.mean(1) if output.reconstruction is not None else torch.zeros_like(kl)
    variational = beta * kl - config.reconstruction_weight * recon
    per_sample = -log_lik * variational if config.combine == "product" else -log_lik + variational
    loss = per_sample.mean()
    if estimator == "score" and output.log_q_cells is not None:
        reward = (-per_sample).detach()
        advantage = reward - batch_mean(reward, 0)
        loss = loss - (advantage * output.log_q_cells.sum(1)).mean()
    if output.glimpse_logits is not None and (config.glimpse_loss_weight or config.glimpse_reward_weight):
        glimpse_log_lik = log_likelihood(output.glimpse_logits, labels, heads)  # (B, T)
        loss = loss - config.glimpse_loss_weight * glimpse_log_lik.mean()
        if config.glimpse_reward_weight and output.log_q_cells is not None:
            reward = glimpse_log_lik.detach()
            advantage = reward - batch_mean(reward, 0)
            loss = loss - config.glimpse_reward_weight * (advantage * output.log_q_cells).sum(1).mean()
    elif config.glimpse_loss_weight or config.glimpse_reward_weight:
        raise ValueError("glimpse_loss_weight and glimpse_reward_weight need a model built with glimpse_heads=True")
    if config.proxy_loss_weight:
        if output.proxy_logits is None:
            raise ValueError("proxy_loss_weight needs a model built with proxy_attention=True")
        loss = loss - config.proxy_loss_weight * log_likelihood(output.proxy_logits, labels, heads).mean()
    if config.location_weight:
        if output.cell_log_probs is None or location_targets is None:
            raise ValueError("location_weight needs the mixture posterior and the batch's box cells (box_cells)")
        loss = loss + config.location_weight * location_loss(output.cell_log_probs[:, 0], location_targets).mean()
    if config.search_weight:
        if output.cell_log_probs is None or output.cells is None or location_targets is None:
            raise ValueError("search_weight needs the mixture posterior and the batch's box cells (box_cells)")
        loss = loss + config.search_weight * search_loss(output.cell_log_probs, output.cells, location_targets).mean()
    if config.window_weight:
        if output.cells is None or location_targets is None or fitted is None:
            raise ValueError("window_weight needs the mixture posterior, the batch's box cells (box_cells) and fitted windows")
        on_box = location_targets.gather(1, output.cells[:, :1])[:, 0] & fitted.present.to(location_targets.device)
        loss = loss + config.window_weight * window_loss(output.z[:, 0], fitted, on_box).mean()
    if config.box_glimpse_weight:
        if output.box_glimpse_logits is None:
            raise ValueError("box_glimpse_weight needs a model with glimpse_heads given the batch's box windows (box_windows)")
        loss = loss - config.box_glimpse_weight * log_likelihood(output.box_glimpse_logits, labels, heads).mean()
    if config.attention_entropy_weight:
        if output.attention_entropy is None:
            raise ValueError("attention_entropy_weight needs a model that reports attention_entropy (architecture 'ats')")
        loss = loss - config.attention_entropy_weight * output.attention_entropy.mean()
    return {"loss": loss, "nll": -log_lik.detach(), "kl": kl.detach(), "reconstruction": recon.detach()}
