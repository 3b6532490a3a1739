"""The one coordinate convention of vsaccade, for every image shape.

Pixels: pixel (row i, column j) covers the continuous square [j, j+1) x [i, i+1); x runs along columns
(width), y along rows (height). Boxes are (x0, y0, x1, y1) in these continuous pixel coordinates.

Glimpse latent z = (s, u, v):
  * (u, v) in [-1, 1] is the window centre: u = -1 is the left edge of the image, u = +1 the right edge;
    v = -1 the top edge, v = +1 the bottom edge (as `torch.nn.functional.grid_sample` with
    align_corners=False), independently per axis, so non-square images need no special case.
  * s in [s_min, s_max] is the window side as a fraction of the *shorter* image side. Windows are square
    in source pixels, whatever the image's aspect ratio.

Proxy: the image resized (aspect kept) so its longer side is P, placed in the top-left corner of a P x P
canvas; the rest is padding, masked out of every location distribution (`proxy_valid_mask`).

Tensor shapes follow (B, T, C, H, W): batch, saccade step, channels, height, width.
"""

from __future__ import annotations

import math

import torch


def window_side_pixels(s: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Window side in source pixels for side fraction(s) s of the shorter image side."""
    return s * min(height, width)


def centre_pixels(u: torch.Tensor, v: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Map centres (u, v) in [-1, 1] to continuous pixel coordinates (x, y)."""
    return (u + 1) * 0.5 * width, (v + 1) * 0.5 * height


def centre_normalised(x: torch.Tensor, y: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `centre_pixels`."""
    return 2 * x / width - 1, 2 * y / height - 1


def glimpse_boxes(z: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., 3) latents (s, u, v) -> (..., 4) boxes (x0, y0, x1, y1) in pixel coordinates."""
    s, u, v = z.unbind(-1)
    side = window_side_pixels(s, height, width)
    x, y = centre_pixels(u, v, height, width)
    return torch.stack([x - side / 2, y - side / 2, x + side / 2, y + side / 2], dim=-1)


def proxy_extent(height: int, width: int, proxy_size: int) -> tuple[int, int]:
    """(rows, cols) of the P x P proxy canvas that hold image content (the rest is padding)."""
    scale = proxy_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def proxy_valid_mask(height: int, width: int, proxy_size: int, cells: int | None = None) -> torch.Tensor:
    """Boolean (cells, cells) mask of proxy cells that overlap image content.

    `cells` defaults to `proxy_size`; a coarser grid (a feature map of the proxy) marks a cell valid when
    any of its area holds content.
    """
    cells = cells or proxy_size
    rows, cols = proxy_extent(height, width, proxy_size)
    edges = torch.arange(cells) * (proxy_size / cells)
    return (edges < rows)[:, None] & (edges < cols)[None, :]


def cell_centres_normalised(height: int, width: int, proxy_size: int, cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres (u, v), each (cells, cells), of a cells x cells grid laid over the P x P proxy canvas.

    Padding cells map outside [-1, 1]; they are masked out by `proxy_valid_mask` anyway.
    """
    image_pixels_per_proxy_pixel = max(height, width) / proxy_size
    centres = (torch.arange(cells) + 0.5) * (proxy_size / cells) * image_pixels_per_proxy_pixel
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return centre_normalised(x, y, height, width)


def cell_half_extent_normalised(height: int, width: int, proxy_size: int, cells: int) -> tuple[float, float]:
    """Half a cell's size in normalised units along u and v (for offsets within a cell)."""
    cell_pixels = (proxy_size / cells) * max(height, width) / proxy_size
    return cell_pixels / width, cell_pixels / height


def cells_of_points(x: torch.Tensor, y: torch.Tensor, height: int, width: int, proxy_size: int, cells: int) -> torch.Tensor:
    """Flat index (row * cells + column) of the cell of a cells x cells grid over the P x P proxy canvas that holds
    each pixel position (x, y) of a height x width image (the grid of `cell_centres_normalised`)."""
    cell_pixels = (proxy_size / cells) * max(height, width) / proxy_size
    column = (x / cell_pixels).floor().long().clamp(0, cells - 1)
    row = (y / cell_pixels).floor().long().clamp(0, cells - 1)
    return row * cells + column


def read_level(side_pixels: float, glimpse_size: int) -> int:
    """Integer downsampling at which a window of `side_pixels` is read for a `glimpse_size` glimpse.

    Reading at about one source pixel per glimpse pixel keeps bilinear sampling free of aliasing and the
    patch small, however large the window is.
    """
    return max(1, int(math.floor(side_pixels / glimpse_size + 1e-6)))
