"""Glimpse sampler: g = crop(x; z), a W x W spatial-transformer window, differentiable w.r.t. z = (s, u, v).

For each glimpse we read only the window's region plus a margin from the large image (at an integer
downsampling that keeps about one source pixel per glimpse pixel, see geometry.read_level), then bilinearly
sample the W x W grid inside that local patch. The patch is a constant; the sampling grid is a function of
z, so gradients reach the coordinates exactly as in a spatial transformer over the whole image, and any
`LargeImage` (in memory, composed on demand, or a file) works without change to the model. Images that declare
`parallel_reads` (files: libvips decodes without holding the GIL) are read by a thread pool, a batch at a time.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from .. import instruments
from ..geometry import glimpse_boxes, read_level
from ..images import LargeImage

MARGIN = 2  # patch pixels read beyond the window on each side, so bilinear taps never leave the patch
_READERS: ThreadPoolExecutor | None = None


def _read_all(images: list[LargeImage], regions: list[tuple]) -> list[torch.Tensor]:
    """Each image's region, read through the instruments' hook (model code reports its reads: instruments.py)."""
    global _READERS
    if len(images) > 1 and any(getattr(image, "parallel_reads", False) for image in images):
        if _READERS is None:
            _READERS = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="vsaccade-read")
        read = instruments.in_context(instruments.read_region)
        return list(_READERS.map(lambda pair: read(pair[0], *pair[1]), zip(images, regions)))
    return [instruments.read_region(image, *region) for image, region in zip(images, regions)]


def sample_glimpses(images: list[LargeImage], z: torch.Tensor, size: int) -> torch.Tensor:
    """images: B large images; z: (B, 3) latents (s, u, v) -> glimpses (B, C, size, size). Reported to the current
    instrument, if any, as stage "resample" (its region reads as "read") and its bilinear sampling ops."""
    with instruments.stage("resample"):
        glimpses = _sample(images, z, size)
    instruments.count_ops("bilinear_sampling", instruments.BILINEAR_OPS * glimpses.numel())
    return glimpses


def _sample(images: list[LargeImage], z: torch.Tensor, size: int) -> torch.Tensor:
    if z.ndim != 2 or z.shape[1] != 3 or z.shape[0] != len(images):
        raise ValueError(f"expected z of shape ({len(images)}, 3), got {tuple(z.shape)}")
    regions, origins = [], []
    with torch.no_grad():
        for image, (s, u, v) in zip(images, z.detach().tolist()):
            side = s * min(image.height, image.width)
            level = read_level(side, size)
            x, y = (u + 1) * 0.5 * image.width, (v + 1) * 0.5 * image.height
            # Align the patch to the global grid of `level` x `level` blocks: the samples then never depend
            # on where the patch happens to start, so the glimpse is a continuous function of z.
            left = (math.floor((x - side / 2) / level) - MARGIN) * level
            top = (math.floor((y - side / 2) / level) - MARGIN) * level
            right = (math.ceil((x + side / 2) / level) + MARGIN) * level
            bottom = (math.ceil((y + side / 2) / level) + MARGIN) * level
            regions.append((top, left, bottom - top, right - left, level))
            origins.append((left, top, level))
        patches = _read_all(images, regions)
    # One canvas size for every batch: read_level keeps a window under 2 * size read pixels a side, plus the margin
    # and a block of rounding each side. A size that depended on the batch would change the rounding of each
    # sample's grid coordinates with its batch-mates, and so, near a pixel centre, its bilinear gradient.
    canvas = 2 * size + 2 * MARGIN + 2
    rows = max(canvas, max(p.shape[1] for p in patches))
    cols = max(canvas, max(p.shape[2] for p in patches))
    batch = torch.zeros(len(patches), patches[0].shape[0], rows, cols, dtype=z.dtype, device=z.device)
    for i, patch in enumerate(patches):
        batch[i, :, : patch.shape[1], : patch.shape[2]] = patch.to(batch)
    # per image (left, top, level, height, width), one tensor: small tensors cost more to make than to use
    frame = torch.tensor([(*origin, image.height, image.width) for origin, image in zip(origins, images)],
                         dtype=z.dtype, device=z.device)
    left, top, level, heights, widths = frame[:, :, None].unbind(1)  # each (B, 1)

    side = z[:, :1] * torch.minimum(heights, widths)
    x, y = (z[:, 1:2] + 1) * 0.5 * widths, (z[:, 2:3] + 1) * 0.5 * heights
    steps = (torch.arange(size, dtype=z.dtype, device=z.device) + 0.5) / size - 0.5  # in (-1/2, 1/2)
    xs = x + steps * side  # (B, W) source x of each glimpse column
    ys = y + steps * side
    # Source pixel coordinate -> grid_sample's normalised patch coordinate (align_corners=False).
    gx = 2 * (xs - left) / (level * cols) - 1
    gy = 2 * (ys - top) / (level * rows) - 1
    grid = torch.stack([gx[:, None, :].expand(-1, size, -1), gy[:, :, None].expand(-1, -1, size)], dim=-1)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def glimpse_boxes_pixels(images: list[LargeImage], z: torch.Tensor) -> torch.Tensor:
    """z (B, T, 3) -> (B, T, 4) windows (x0, y0, x1, y1) in each image's pixel coordinates."""
    return torch.stack([glimpse_boxes(zb, image.height, image.width) for image, zb in zip(images, z)])
