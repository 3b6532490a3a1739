"""One entry point for 28 x 28 digits: MNIST when it can be found or downloaded, else font-rendered digits.

`load_digits(split, source, data_dir)` resolves MNIST in this order: `data_dir` (the IDX files or an `mnist/`
subfolder), `$VSACCADE_DATA/mnist`, the cache (`$VSACCADE_CACHE/mnist`, default `~/.cache/vsaccade/mnist`),
a download into the cache unless `VSACCADE_OFFLINE=1`; with source "auto" and none of these, it renders digits
from Pillow's bundled font and prints one notice line to stderr. `DigitSet.describe()` says which source was
used, for checkpoints and result files.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL

from .font_digits import render_font_digits
from .mnist import (
    MNIST_FILES,
    DataSourceError,
    download_mnist,
    find_mnist_dir,
    load_mnist,
    mnist_cache_dir,
    offline,
    search_locations,
)

__all__ = ["DataSourceError", "DigitSet", "clear_cache", "load_digits", "FONT_COUNTS", "FONT_SEEDS"]

SPLITS = ("train", "test")
SOURCES = ("auto", "mnist", "font")
FONT_COUNTS = {"train": 60000, "test": 10000}  # as many as MNIST has
FONT_SEEDS = {"train": 1, "test": 2}  # different seeds, so font train and test digits differ

_mnist_cache: dict[tuple[str, str, tuple[tuple[int, int], ...]], tuple[np.ndarray, np.ndarray]] = {}
_font_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
_notices: set[str] = set()
_failed_downloads: dict[str, str] = {}  # cache dir -> why downloading into it failed: not retried in this process


@dataclass
class DigitSet:
    """Digits of one split: (N, 28, 28) uint8 images, white on black, with (N,) int64 labels in 0-9."""

    images: np.ndarray
    labels: np.ndarray
    source: str  # "mnist" or "font"
    details: dict = field(default_factory=dict)  # where the digits came from: path, or seed and renderer

    def describe(self) -> dict:
        """Plain data for checkpoints and result files, e.g. {"source": "mnist", "path": ..., "count": N}."""
        return {"source": self.source, **self.details, "count": int(len(self.labels))}


def clear_cache() -> None:
    """Forget the digits loaded or rendered, and any failed download, so far in this process."""
    _mnist_cache.clear()
    _font_cache.clear()
    _failed_downloads.clear()
    _notices.clear()


def _file_signature(directory: Path) -> tuple[tuple[int, int], ...]:
    """Size and modification time of the MNIST files in `directory`: a changed file invalidates cached arrays."""
    paths = [directory / (stem + suffix) for stem in MNIST_FILES for suffix in ("", ".gz")]
    stats = [path.stat() for path in paths if path.is_file()]
    return tuple((stat.st_size, stat.st_mtime_ns) for stat in stats)


def _mnist_set(directory: Path, split: str) -> DigitSet:
    key = (str(directory.resolve()), split, _file_signature(directory))
    if key not in _mnist_cache:
        images, labels = load_mnist(directory, split)
        images.flags.writeable = labels.flags.writeable = False
        _mnist_cache[key] = images, labels
    images, labels = _mnist_cache[key]
    return DigitSet(images.copy(), labels.copy(), "mnist", {"split": split, "path": str(directory.resolve())})


def _font_set(split: str) -> DigitSet:
    count, seed = FONT_COUNTS[split], FONT_SEEDS[split]
    if (count, seed) not in _font_cache:
        images, labels = render_font_digits(count, seed)
        images.flags.writeable = labels.flags.writeable = False
        _font_cache[count, seed] = images, labels
    images, labels = _font_cache[count, seed]
    details = {"split": split, "seed": seed, "renderer": f"Pillow {PIL.__version__} load_default font"}
    return DigitSet(images.copy(), labels.copy(), "font", details)


def load_digits(split: str, source: str = "auto", data_dir: str | os.PathLike | None = None) -> DigitSet:
    """The digits of `split` ("train": MNIST's 60000 training digits, "test": its 10000 t10k digits).

    `source`: "mnist" (DataSourceError when MNIST cannot be found or downloaded), "font", or "auto" (MNIST if
    available, else font digits with one notice line on stderr). `data_dir` holds the IDX files or an `mnist/`
    subfolder and is searched before `$VSACCADE_DATA`. Loaded arrays, and a failed download, are remembered
    in this process (see `clear_cache`); each call returns its own copies of the arrays.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source == "font":
        return _font_set(split)

    directory = find_mnist_dir(data_dir)
    reason = "downloads disabled by VSACCADE_OFFLINE=1"
    if directory is None and not offline():
        cache = str(mnist_cache_dir())
        if cache in _failed_downloads:
            reason = _failed_downloads[cache]
        else:
            try:
                directory = download_mnist()
                print(f"vsaccade: downloaded MNIST into {directory}", file=sys.stderr)
            except DataSourceError as err:
                reason = _failed_downloads[cache] = str(err)
    if directory is not None:
        return _mnist_set(directory, split)

    searched = ", ".join(str(path) for path in search_locations(data_dir))
    if source == "mnist":
        raise DataSourceError(
            f"MNIST not found (searched {searched}) and not downloadable ({reason}); "
            "pass data_dir, set VSACCADE_DATA to a folder holding mnist/, or use source='font'"
        )
    notice = f"vsaccade: MNIST unavailable (searched {searched}; {reason}); using digits rendered from Pillow's font"
    if notice not in _notices:  # once per process, however many splits fall back
        _notices.add(notice)
        print(notice, file=sys.stderr)
    return _font_set(split)
