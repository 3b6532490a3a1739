"""Cluttered MNIST: the paper's Two-Digit Cluttered MNIST and the classic single-digit variants.

DeepMind's recipe (method.md): a black canvas; `distractors` 8x8 crops, each at a random offset of a random
digit of the same split, added at uniform positions and clipped to [0, 1]; then `digits` full 28x28 digits
added at uniform positions, clipped again. Labels: `pair` (the unordered pair, 55 classes), `sum` (19), or
`digit` (single-digit variants, 10).

The paper's "large" image is the canvas bilinearly upsampled to 2528x2528 (it carries no detail beyond the
canvas); the proxy is the canvas area-downsampled by `proxy_factor`.
"""

from __future__ import annotations

from itertools import combinations_with_replacement

import numpy as np
import torch
import torch.nn.functional as F

from ..images import ArrayImage, UpsampledImage
from .base import Head, Sample, Task, register_task
from .digit_pool import digit_pool, sample_rng, tight_box

PAIRS = list(combinations_with_replacement(range(10), 2))
PAIR_INDEX = {pair: i for i, pair in enumerate(PAIRS)}
LABEL_CLASSES = {"pair": len(PAIRS), "sum": 19, "digit": 10}
DEFAULT_SIZES = {"train": 50_000, "validation": 2_000, "test": 10_000}


@register_task("cluttered")
class ClutteredMNIST(Task):
    name = "cluttered"

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        label: str = "pair",
        canvas_size: int = 100,
        digits: int = 2,
        distractors: int = 8,
        image_size: int = 2528,
        proxy_factor: float = 8.0,
        size: int | None = None,
        digit_source: str = "auto",
        data_dir=None,
    ):
        if label not in LABEL_CLASSES:
            raise ValueError(f"unknown cluttered label {label!r}; choose one of {sorted(LABEL_CLASSES)}")
        if (label == "digit") != (digits == 1):
            raise ValueError(f"label {label!r} needs {'1 digit' if label == 'digit' else '2 digits'}, got digits={digits}")
        if canvas_size < 28:
            raise ValueError(f"canvas_size must be at least 28 (one digit), got {canvas_size}")
        if image_size < canvas_size:
            raise ValueError(f"image_size ({image_size}) must be at least canvas_size ({canvas_size})")
        self.split, self.seed, self.label = split, seed, label
        self.canvas_size, self.digits, self.distractors = canvas_size, digits, distractors
        self.image_height = self.image_width = image_size
        self.proxy_factor = proxy_factor
        self.proxy_size = max(1, round(canvas_size / proxy_factor))
        self.size = DEFAULT_SIZES[split] if size is None else size
        self.pool = digit_pool(split, digit_source, data_dir)
        self.heads = (Head(label, LABEL_CLASSES[label]),)

    def __len__(self):
        return self.size

    def canvas(self, index: int) -> tuple[np.ndarray, list[int], list[tuple]]:
        """The small canvas, the digit classes and their tight boxes in canvas pixels."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        rng = sample_rng(self.seed, self.split, index)
        n, images = self.canvas_size, self.pool.images
        canvas = np.zeros((n, n), np.float32)
        for _ in range(self.distractors):
            digit = images[rng.integers(len(images))]
            oy, ox = rng.integers(0, 28 - 8 + 1, size=2)
            y, x = rng.integers(0, n - 8 + 1, size=2)
            canvas[y : y + 8, x : x + 8] += digit[oy : oy + 8, ox : ox + 8]
        np.clip(canvas, 0, 1, out=canvas)
        classes, boxes = [], []
        for _ in range(self.digits):
            k = rng.integers(len(images))
            y, x = rng.integers(0, n - 28 + 1, size=2)
            canvas[y : y + 28, x : x + 28] += images[k]
            classes.append(int(self.pool.labels[k]))
            boxes.append(tight_box(images[k], y, x))
        np.clip(canvas, 0, 1, out=canvas)
        return canvas, classes, boxes

    def label_of(self, classes: list[int]) -> int:
        if self.label == "pair":
            return PAIR_INDEX[tuple(sorted(classes))]
        return sum(classes)

    def __getitem__(self, index):
        canvas, classes, boxes = self.canvas(index)
        base = torch.from_numpy(canvas)[None]
        scale = self.image_height / self.canvas_size
        image = ArrayImage(base) if scale == 1 else UpsampledImage(base, self.image_height, self.image_width)
        proxy = F.interpolate(base[None], size=(self.proxy_size,) * 2, mode="area")[0]
        image.count_pixels(base.shape[-2] * base.shape[-1])  # the proxy reads the canvas (images.LargeImage)
        return Sample(
            image=image,
            proxy=proxy,
            labels={self.label: self.label_of(classes)},
            boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) * scale,
        )

    def describe(self):
        return {
            "name": self.name, "split": self.split, "seed": self.seed, "label": self.label,
            "canvas_size": self.canvas_size, "digits": self.digits, "distractors": self.distractors,
            "image_size": self.image_height, "proxy_factor": self.proxy_factor, "proxy_size": self.proxy_size,
            "size": self.size, "digit_source": self.pool.source,
        }
