"""The large-image interface: what the model may ask of an image too big to load.

A `LargeImage` answers two questions, and the model asks nothing else:
  * `proxy(size)`: a small, whole view (P x P, aspect kept, top-left placed, zero padding; see geometry.py);
  * `read_region(top, left, height, width, downsample)`: the pixels of one window, optionally reduced by an
    integer factor, zero outside the image.
In-memory arrays, synthetic scenes composed on demand and (later) files read lazily all implement it, so
the glimpse sampler never needs to know where pixels come from.
"""

from __future__ import annotations

import abc
import math
import threading

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import proxy_extent


class ImageError(ValueError):
    """An image that cannot be used (wrong shape, non-finite pixels, too small...)."""


_COUNTING = threading.Lock()


class LargeImage(abc.ABC):
    """An image of `channels` x `height` x `width` float pixels in [0, 1], read lazily.

    Pixels read, the project's one definition (every model, `evaluate`, `vsaccade bench` and run summaries use it):
    the source pixels each request covers at the level it is read from, counted per image as requests are made
    (`pixels_requested`), the proxy's and the glimpses' margins included. A region read covers its rectangle
    clipped to the image; at a pyramid level of factor f it covers that level's pixels (about 1/f^2 as many). A
    proxy costs the read it makes: a full-resolution pass for an image without levels (every pixel), the level a
    file's thumbnail shrinks from otherwise. Where a file is tiled, `tiles_decoded` counts the tiles those
    requests touch (a tile touched twice counts twice: no cache is assumed). A proxy a task makes from a stored
    low-resolution level counts that level's pixels (Cluttered MNIST's canvas); a proxy of another modality that a
    task supplies (the counting task's mini-map) is not a read of the image."""

    height: int
    width: int
    channels: int
    pixels_requested = 0  # per instance, from its first read on (count_read)
    tiles_decoded = 0

    def level_factor(self, downsample: int) -> int:
        """The factor of the stored level a read at `downsample` comes from (1: full resolution)."""
        return 1

    def tile_side(self, factor: int) -> int | None:
        """The tile side of the level of `factor`, where the image is stored in tiles."""
        return None

    def count_read(self, top: int, left: int, height: int, width: int, downsample: int = 1,
                   factor: int | None = None) -> None:
        """Add one request to `pixels_requested` (and `tiles_decoded`), by the definition above; `factor`: the level
        read, where it is not the one `level_factor(downsample)` gives (a file's thumbnail)."""
        factor = factor or self.level_factor(downsample)
        y0, x0 = max(top, 0) // factor, max(left, 0) // factor
        y1 = math.ceil(min(top + height, self.height) / factor)
        x1 = math.ceil(min(left + width, self.width) / factor)
        if y1 <= y0 or x1 <= x0:
            return
        tile = self.tile_side(factor)
        self.count_pixels((y1 - y0) * (x1 - x0),
                          (math.ceil(y1 / tile) - y0 // tile) * (math.ceil(x1 / tile) - x0 // tile) if tile else 0)

    def count_pixels(self, pixels: int, tiles: int = 0) -> None:
        """Add pixels (and tiles) read another way: a proxy a task makes from a stored low-resolution level."""
        with _COUNTING:
            self.pixels_requested += pixels
            self.tiles_decoded += tiles

    def count_proxy(self, size: int) -> None:
        """Count the proxy's read: the whole image at the level a proxy of `size` is made from."""
        rows, cols = proxy_extent(self.height, self.width, size)
        self.count_read(0, 0, self.height, self.width, max(1, min(self.height // rows, self.width // cols)))

    @abc.abstractmethod
    def read_region(self, top: int, left: int, height: int, width: int, downsample: int = 1) -> torch.Tensor:
        """Pixels of rows [top, top+height) and columns [left, left+width), zero outside the image.

        With `downsample` = d > 1 each output pixel summarises a d x d block of source pixels, so the
        result is (channels, ceil(height / d), ceil(width / d)) float32.
        """

    def prefetch(self) -> None:
        """Do now the decoding the first region read would otherwise do (a reading thread ahead of the model calls
        it: `vsaccade predict`); nothing for images read region by region."""

    def proxy(self, size: int) -> torch.Tensor:
        """(channels, size, size): the whole image, aspect kept, top-left placed, zero padding. (The read it makes is
        counted by read_region, as every subclass's read_region counts itself.)"""
        rows, cols = proxy_extent(self.height, self.width, size)
        step = max(1, min(self.height // rows, self.width // cols))
        coarse = self.read_region(0, 0, self.height, self.width, downsample=step)
        out = torch.zeros(self.channels, size, size)
        out[:, :rows, :cols] = F.interpolate(coarse[None], size=(rows, cols), mode="area")[0]
        return out

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width


def check_fits_a_glimpse(image: "LargeImage", glimpse_size: int) -> None:
    """An ImageError where the image's shorter side is below one glimpse (what predict and training's scan refuse)."""
    if min(image.height, image.width) < glimpse_size:
        raise ImageError(f"image is {image.width}x{image.height}, smaller than one {glimpse_size}x{glimpse_size} glimpse")


def _block_mean(pixels: torch.Tensor, downsample: int) -> torch.Tensor:
    """Mean over downsample x downsample blocks of (C, H, W), zero-padding the ragged edge: F.avg_pool2d's values bit
    for bit (the block's pixels summed in its order, then divided), several times faster on one thread."""
    if downsample == 1:
        return pixels
    c, h, w = pixels.shape
    pad_h, pad_w = (-h) % downsample, (-w) % downsample
    if pad_h or pad_w:
        pixels = F.pad(pixels, (0, pad_w, 0, pad_h))
    blocks = pixels.reshape(c, (h + pad_h) // downsample, downsample, (w + pad_w) // downsample, downsample)
    total = blocks[:, :, 0, :, 0]
    for i in range(downsample):
        for j in range(downsample):
            if i or j:
                total = total + blocks[:, :, i, :, j]
    return total / (downsample * downsample)


class ArrayImage(LargeImage):
    """An image held in memory: a (C, H, W) tensor, or an (H, W) / (H, W, C) numpy array (uint8 or float)."""

    def __init__(self, pixels):
        self.pixels = as_chw_tensor(pixels)
        self.channels, self.height, self.width = self.pixels.shape

    def read_region(self, top, left, height, width, downsample=1):
        self.count_read(top, left, height, width, downsample)
        if top >= 0 and left >= 0 and top + height <= self.height and left + width <= self.width:
            region = self.pixels[:, top : top + height, left : left + width]  # a view: pooled or copied, never a zero canvas
            return _block_mean(region, downsample) if downsample > 1 else region.clone()
        out = torch.zeros(self.channels, height, width)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + height, self.height), min(left + width, self.width)
        if y1 > y0 and x1 > x0:
            out[:, y0 - top : y1 - top, x0 - left : x1 - left] = self.pixels[:, y0:y1, x0:x1]
        return _block_mean(out, downsample)

    def proxy(self, size):
        # Area-average the pixels straight into the proxy: O(pixels) reads, no full-size copy.
        self.count_proxy(size)
        rows, cols = proxy_extent(self.height, self.width, size)
        out = torch.zeros(self.channels, size, size)
        out[:, :rows, :cols] = F.adaptive_avg_pool2d(self.pixels[None], (rows, cols))[0]
        return out


class UpsampledImage(LargeImage):
    """A small base image seen as its bilinear upsampling to (height, width), never materialised.

    This is the paper's synthetic "large" image (a 100x100 canvas upsampled to 2528x2528). Pixel values
    equal `F.interpolate(base, (height, width), mode="bilinear", align_corners=False)`; a downsampled
    read takes each block's value at its centre (the upsampled image is smooth at that scale).
    """

    def __init__(self, base: torch.Tensor, height: int, width: int):
        self.base = as_chw_tensor(base)
        self.channels = self.base.shape[0]
        self.height, self.width = int(height), int(width)

    def read_region(self, top, left, height, width, downsample=1):
        self.count_read(top, left, height, width, downsample)
        d = downsample
        ys = top + (torch.arange(math.ceil(height / d)) + 0.5) * d
        xs = left + (torch.arange(math.ceil(width / d)) + 0.5) * d
        gy, gx = torch.meshgrid(2 * ys / self.height - 1, 2 * xs / self.width - 1, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1)[None]
        out = F.grid_sample(self.base[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        inside = ((ys >= 0) & (ys < self.height))[:, None] & ((xs >= 0) & (xs < self.width))[None, :]
        return out * inside

    def proxy(self, size):
        self.count_proxy(size)
        rows, cols = proxy_extent(self.height, self.width, size)
        out = torch.zeros(self.channels, size, size)
        out[:, :rows, :cols] = F.interpolate(self.base[None], size=(rows, cols), mode="area")[0]
        return out


def as_chw_tensor(pixels) -> torch.Tensor:
    """Convert an array to a finite float32 (C, H, W) tensor in [0, 1], or raise ImageError."""
    if isinstance(pixels, np.ndarray):
        if pixels.ndim == 3:
            pixels = np.moveaxis(pixels, -1, 0)
        tensor = torch.from_numpy(np.array(pixels, copy=True))
    elif isinstance(pixels, torch.Tensor):
        tensor = pixels.detach()
    else:
        raise ImageError(f"expected a numpy array or torch tensor, got {type(pixels).__name__}")
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim != 3:
        raise ImageError(f"expected an image of shape (H, W), (H, W, C) or (C, H, W); got {tuple(tensor.shape)}")
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255
    elif tensor.is_floating_point():
        tensor = tensor.float()
        if not torch.isfinite(tensor).all():
            raise ImageError("image contains NaN or infinite pixels")
    else:
        raise ImageError(f"unsupported pixel dtype {tensor.dtype}; use uint8 or float")
    if tensor.shape[0] > 4:
        raise ImageError(f"image has {tensor.shape[0]} channels; expected 1-4 (shape {tuple(tensor.shape)})")
    return tensor.contiguous()
