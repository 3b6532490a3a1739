"""Which digits each split of a synthetic task draws from.

train and validation draw from disjoint parts of the source's training digits (validation takes the last
10%), test from its test digits, so no digit image is shared between the split used for model selection and
the one used for training, and the test split is never touched until the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..data.digits import load_digits

SPLITS = ("train", "validation", "test")
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
VALIDATION_FRACTION = 0.1
_pools: dict = {}


@dataclass
class DigitPool:
    images: np.ndarray  # (N, 28, 28) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64
    by_class: list  # 10 arrays of indices into images
    source: dict  # plain-data description of where the digits came from


def digit_pool(split: str, source: str = "auto", data_dir=None) -> DigitPool:
    """The digits of one split, shared by every task built in this process from the same source."""
    key = (split, source, str(data_dir), os.environ.get("VSACCADE_DATA"), os.environ.get("VSACCADE_CACHE"))
    if key not in _pools:
        _pools[key] = _build_pool(split, source, data_dir)
    return _pools[key]


def _build_pool(split: str, source: str, data_dir) -> DigitPool:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    digits = load_digits("test" if split == "test" else "train", source=source, data_dir=data_dir)
    images, labels = digits.images, digits.labels
    if split != "test":
        cut = int(round(len(labels) * (1 - VALIDATION_FRACTION)))
        images, labels = (images[:cut], labels[:cut]) if split == "train" else (images[cut:], labels[cut:])
    images = images.astype(np.float32) / 255
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    return DigitPool(images, labels.astype(np.int64), by_class, {**digits.describe(), "split": split})


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one sample: a pure function of (seed, split, index)."""
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


def tight_box(digit: np.ndarray, top: int, left: int, threshold: float = 0.0) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the digit's inked pixels, placed with its 28x28 corner at (top, left)."""
    rows = np.flatnonzero((digit > threshold).any(axis=1))
    cols = np.flatnonzero((digit > threshold).any(axis=0))
    if rows.size == 0:
        return left, top, left + digit.shape[1], top + digit.shape[0]
    return left + cols[0], top + rows[0], left + cols[-1] + 1, top + rows[-1] + 1
