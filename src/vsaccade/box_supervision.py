"""Box supervision: loss terms that need object boxes, a named variant outside the paper's method (which never sees
boxes), reported as box-supervised and never as the label-only method (docs/benchmarks/files.md).

* location_weight * -log q(c_1 in C_boxes) (`FirstCellLocation`): the first glimpse's cell, where C_boxes are the
  cells holding a box centre (`box_cells`); samples without a box add nothing.
* search_weight (`SearchLocation`, `search_loss`): while no earlier glimpse's cell holds a box centre, glimpse t is
  trained towards one among the cells still allowed, so a first glimpse on a decoy is followed by one on the sign.
* box_glimpse_weight * -log p_t(y | g_box) (`BoxGlimpse`): the per-glimpse heads (and the glimpse encoder) also read
  one extra glimpse per image at its box (`box_windows`; a random window where there is none), so the reader learns
  what a sign says before the posterior reliably finds one.
* With box_window_scale k, a box's window is fitted to it (`fitted_windows`: centred on it, k times its side), the
  box glimpses are drawn around that window, and window_weight * the squared error of the first window to it
  (`WindowFit`, `window_loss`; where c_1 holds the box centre) trains the first glimpse's offset and side as well as
  its cell: a small object is then read magnified, at about the same size in the glimpse as a large one.

`box_inputs` computes, once per batch, what these terms read beside the model's output.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .config import ObjectiveConfig
from .geometry import cells_of_points, centre_normalised
from .objective import Term, log_likelihood


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


class BoxInputs(NamedTuple):
    """What the box terms read for one batch beside the model's output, each None where no term asks for it."""

    box_z: torch.Tensor | None = None  # (B, 3) the box glimpses' windows (box_glimpse_weight; the model's `box_z`)
    box_cells: torch.Tensor | None = None  # (B, c^2) bool, the cells holding a box centre (location, search, window)
    fitted: FittedWindows | None = None  # the windows fitted to the boxes (box_window_scale)


def box_inputs(images: list, boxes: list, model_config, config: ObjectiveConfig, noise, device=None) -> BoxInputs:
    """The batch's BoxInputs for the terms `config` weights. images: B LargeImages; boxes: B tensors (N_b, 4)."""
    c = model_config
    fitted = fitted_windows(images, boxes, config.box_window_scale, c.s_min, c.s_max) if config.box_window_scale else None
    box_z = box_windows(images, boxes, c.s_min, c.s_max, 0.5 / c.location_cells, noise, fitted) if config.box_glimpse_weight else None
    targets = box_cells(images, boxes, c.proxy_size, c.location_cells, device) if config.needs_box_cells else None
    return BoxInputs(box_z, targets, fitted)


def box_supervision(images: list, boxes: list, model_config, config: ObjectiveConfig, noise, device=None):
    """(box_z, box cells, fitted windows) of `box_inputs`, as a tuple."""
    return tuple(box_inputs(images, boxes, model_config, config, noise, device))


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


class FirstCellLocation(Term):
    field, kind, sign = "location_weight", "box supervision", 1.0
    needs, inputs = ("cell_log_probs",), ("box_cells",)

    def value(self, output, context):
        return location_loss(output.cell_log_probs[:, 0], context.box.box_cells).mean()


class SearchLocation(Term):
    field, kind, sign = "search_weight", "box supervision", 1.0
    needs, inputs = ("cell_log_probs", "cells"), ("box_cells",)

    def value(self, output, context):
        return search_loss(output.cell_log_probs, output.cells, context.box.box_cells).mean()


class WindowFit(Term):
    field, kind, sign = "window_weight", "box supervision", 1.0
    needs, inputs = ("cells", "z"), ("box_cells", "fitted")

    def value(self, output, context):
        targets, fitted = context.box.box_cells, context.box.fitted
        on_box = targets.gather(1, output.cells[:, :1])[:, 0] & fitted.present.to(targets.device)
        return window_loss(output.z[:, 0], fitted, on_box).mean()


class BoxGlimpse(Term):
    field, kind, sign = "box_glimpse_weight", "box supervision", -1.0
    needs = ("box_glimpse_logits",)

    def value(self, output, context):
        return log_likelihood(output.box_glimpse_logits, context.labels, context.heads).mean()
