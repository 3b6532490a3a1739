"""Digits rendered from Pillow's bundled scalable font: the fallback when MNIST is unavailable.

Glyph templates are drawn once per (digit, font size, stroke width); each sample then gets its own
slant (shear), rotation, scale and position through one vectorised bilinear warp, placed like MNIST:
the digit fits a box of about 20 x 20 pixels and its centre of mass sits near the centre of the 28 x 28 frame.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = 28
# (font size, stroke width) pairs: stroke widths stay below ~6% of the size so that, once scaled into the
# 20-pixel box, strokes are about 2 to 4.5 pixels thick, like MNIST's pen strokes.
FONT_STYLES = ((24, 0), (24, 1), (32, 0), (32, 1), (40, 0), (40, 1), (40, 2), (48, 0), (48, 1), (48, 2))
_CANVAS = 72  # template side: holds the largest glyph with stroke, with a zero margin for the warp
_BATCH = 4096


def _templates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Glyph templates (K, C, C) float32 in [0, 255], their centres of mass (K, 2) and boxes (K, 4).

    Template k shows digit k % 10; centres are (x, y), boxes (x0, y0, x1, y1), in pixel coordinates.
    """
    images = []
    for size, stroke in FONT_STYLES:
        font = ImageFont.load_default(size=size)
        for digit in range(10):
            canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
            ImageDraw.Draw(canvas).text(
                (_CANVAS / 2, _CANVAS / 2), str(digit), fill=255, font=font, anchor="mm",
                stroke_width=stroke, stroke_fill=255,
            )
            images.append(np.asarray(canvas, dtype=np.float32))
    stack = np.stack(images)
    stack[:, [0, -1], :] = 0  # a guaranteed zero border: out-of-range samples read zeros
    stack[:, :, [0, -1]] = 0
    coords = np.arange(_CANVAS, dtype=np.float64)
    mass = stack.sum(axis=(1, 2), dtype=np.float64)
    centres = np.stack([(stack.sum(axis=1) @ coords) / mass, (stack.sum(axis=2) @ coords) / mass], axis=1)
    boxes = np.empty((len(stack), 4))
    for k, image in enumerate(stack):
        rows, cols = np.nonzero(image > 32)
        boxes[k] = cols.min(), rows.min(), cols.max() + 1, rows.max() + 1
    return stack, centres, boxes


def _warp(templates: np.ndarray, index: np.ndarray, inverse: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Bilinear samples of templates[index] at inverse @ (x, y) + offset for each output pixel: (n, 28, 28)."""
    count, side = len(index), templates.shape[-1]
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    grid = np.stack([xs.ravel(), ys.ravel()])  # (2, 784)
    source = inverse.astype(np.float32) @ grid + offset.astype(np.float32)[:, :, None]  # (n, 2, 784)
    sx = np.clip(source[:, 0], 0, side - 1.001)
    sy = np.clip(source[:, 1], 0, side - 1.001)
    x0, y0 = sx.astype(np.int64), sy.astype(np.int64)
    fx, fy = sx - x0, sy - y0
    flat = templates.reshape(-1)
    base = index[:, None] * (side * side) + y0 * side + x0
    top = flat[base] * (1 - fx) + flat[base + 1] * fx
    bottom = flat[base + side] * (1 - fx) + flat[base + side + 1] * fx
    return (top * (1 - fy) + bottom * fy).reshape(count, SIZE, SIZE)


def render_font_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` font digits as (count, 28, 28) uint8 images (white on black) and (count,) int64 labels.

    Labels are balanced over 0-9 (exactly when `count` is a multiple of 10) in random order. Each digit has
    a random font size and stroke width, slant, rotation, scale and position jitter. Deterministic per seed;
    60000 digits take one to two seconds.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = np.random.default_rng(seed)
    templates, centres, boxes = _templates()
    labels = rng.permutation(np.arange(count, dtype=np.int64) % 10)
    variants = len(templates) // 10
    index = rng.integers(0, variants, size=count) * 10 + labels  # template k shows digit k % 10

    slant = rng.uniform(-0.15, 0.45, size=count)  # x shifts by slant * height above the centre: right lean
    angle = np.deg2rad(rng.uniform(-12.0, 12.0, size=count))
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shear = np.zeros((count, 2, 2))
    shear[:, 0, 0] = shear[:, 1, 1] = 1.0
    shear[:, 0, 1] = -slant
    linear = rotation @ shear  # (n, 2, 2), before scaling

    # The glyph box's corners, relative to the centre of mass, after slant and rotation, give the extent to fit.
    x0, y0, x1, y1 = (boxes[index, i] for i in range(4))
    cx, cy = centres[index, 0], centres[index, 1]
    corners = np.stack([np.stack([x0 - cx, x1 - cx, x0 - cx, x1 - cx], -1),
                        np.stack([y0 - cy, y0 - cy, y1 - cy, y1 - cy], -1)], -2)  # (n, 2, 4)
    moved = linear @ corners
    extent = np.maximum(np.ptp(moved[:, 0], axis=-1), np.ptp(moved[:, 1], axis=-1))
    scale = rng.uniform(16.0, 21.0, size=count) / extent
    forward = linear * scale[:, None, None]
    target = (SIZE - 1) / 2 + rng.uniform(-1.5, 1.5, size=(count, 2))  # where the centre of mass lands

    inverse = np.linalg.inv(forward)
    offset = centres[index] - np.einsum("nij,nj->ni", inverse, target)
    images = np.empty((count, SIZE, SIZE), dtype=np.uint8)
    for start in range(0, count, _BATCH):
        part = slice(start, start + _BATCH)
        warped = _warp(templates, index[part], inverse[part], offset[part])
        images[part] = np.clip(np.rint(warped), 0, 255).astype(np.uint8)
    return images, labels
