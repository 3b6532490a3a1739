"""Megapixel MNIST (Attention Sampling; extended by Iterative Patch Selection), rendered on demand.

Recipe (method.md), per image of a `canvas_size` x `canvas_size` black single-channel canvas:
  * a target class t uniform in 0-9; `target_count` (3) digits of class t and `digits_per_image -
    target_count` (2) digits of other classes, each drawn uniformly, with replacement, from the split's digit
    images of class t, respectively from all the split's digit images whose class is not t;
  * each digit's 28x28 top-left corner (row, col) uniform in [0, canvas-28]^2, re-drawn until its box overlaps
    none of the boxes already placed;
  * `noise_patches` (50) noise patches whose corners are uniform in [28, canvas-28)^2, each one of the split's
    `noise_patterns` (50) patterns chosen uniformly;
  * labels: `majority` = t; `max` = the largest class present; `top` = the class of the digit whose corner has
    the smallest row (ties: the smaller column); `multi` = the 10-d multi-hot of the classes present.
Noise patterns are shared by the whole split (a function of (seed, split)): each is the union of two straight
strokes, 56 points from a corner of the 28x28 box at an angle uniform in [0, 72) degrees from the row axis
(stroke i and stroke perm(i), the second one mirrored left-right with probability 0.4422, see below), each
inked pixel of intensity U[0.8, 1), independently per pixel.

Draw order and occlusion: every object is *assigned*, as a whole 28x28 patch, zeros included (the public
generator's `img[slice] = patch`): a later object replaces every pixel of its box, so with `noise_first=True`
(the IPS order: all noise patches, then the digits) each digit's 28x28 box is intact, while with
`noise_first=False` (the Attention Sampling order: digits, then noise) a noise box erases the digit pixels under
it, even where the noise pattern itself is black. Within a group the order is the draw order (target digits
first, then the others; noise patches in the order they were drawn). Digit boxes never overlap each other.

Storage: a split is never rendered densely (5000 canvases of 1500x1500 float32 are 45 GB). A sample is a
`MegapixelScene` (digit ids and corners, noise ids and corners, the order) and a `MegapixelImage`, a lazy
`LargeImage` that composes only the objects intersecting a requested window, and the proxy directly from
the description (each object's visible part through the separable area-pooling matrices).

The public generator (idiap/attention-sampling scripts/make_mnist.py, and its IPS adaptation,
benbergner/ips data/megapixel_mnist/make_mnist.py) was read, not copied. Same: the draw sequence (numbers,
then positions, then noise), the noise construction, the whole-patch assignment, both occlusion orders, the
negatives uniform over the non-target *images* (so their classes follow the source's class frequencies), the
noise corner range, the `top` label taken from the placement corner's row (not the inked pixels). Deviations:
  * randomness: the public script draws a whole split from one global NumPy stream seeded `seed + train`;
    here each sample is a pure function of (seed, split, index) (`sample_rng`) and the noise patterns of
    (seed, split), so samples are independent of the split size and can be made in any order;
  * digit corners: the public script rounds a uniform real in [0, canvas-28] (half weight on the two end
    values); here they are uniform integers, as method.md says;
  * `top` ties: the public script takes the first digit in draw order (np.argmin); here the smaller column;
  * splits: the public script makes 5000 train images from MNIST train and 1000 test from MNIST test; here
    4500 train / 500 validation from disjoint parts of MNIST train (`digit_pool`) and 1000 test;
  * the public noise code flips the second stroke left-right twice (two flags of probability 0.33, both on the
    column axis, where the second was presumably meant for rows); its effect, a left-right mirror with
    probability 2 * 0.33 * 0.67 = 0.4422, is kept, so the patterns follow the public distribution;
  * pixel values: the public script stores the canvas as uint8 (255 * value, truncated); here noise
    intensities are quantised the same way (floor(255 v) / 255) but digit pixels keep their exact value
    (the public float32 round trip can lower a digit pixel by 1/255);
  * low resolution: Attention Sampling's low-resolution view pastes each object separately rescaled (a
    3x3 patch at int(0.12 * corner)); here the proxy is the dense canvas area-downsampled
    (`F.interpolate(mode="area")`) to round(canvas * proxy_scale) pixels (180 by default).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import proxy_extent
from ..images import LargeImage, _block_mean
from .base import Head, Sample, Task, register_task
from .digit_pool import SPLIT_IDS, digit_pool, sample_rng, tight_box
from tqdm import tqdm

PATCH = 28  # side of a digit and of a noise pattern
DEFAULT_SIZES = {"train": 4500, "validation": 500, "test": 1000}
NOISE_STREAM = 0x6E6F6973  # spawn key of the split's noise-pattern stream ("nois")
MAX_ANGLE = math.pi / 2.5  # 72 degrees
MIRROR_PROBABILITY = 0.33  # per flag; two flags, mirrored when exactly one is set (see module docstring)
MAX_PLACEMENT_TRIES = 100_000


@dataclass(frozen=True)
class MegapixelScene:
    """The sparse description of one image: everything needed to render it, nothing rendered.

    digit_ids index the split's digit pool; positions are (row, col) top-left corners of 28x28 boxes; the
    digits are listed in draw order (the `target_count` targets first).
    """

    target: int
    digit_ids: np.ndarray  # (D,) int64, indices into the split's digit pool
    digit_classes: np.ndarray  # (D,) int64
    digit_positions: np.ndarray  # (D, 2) int64 (row, col)
    noise_ids: np.ndarray  # (K,) int64, indices into the split's noise patterns
    noise_positions: np.ndarray  # (K, 2) int64 (row, col)
    noise_first: bool  # True: noise drawn first, digits on top (IPS); False: noise over digits (AS)


class MegapixelImage(LargeImage):
    """A Megapixel MNIST canvas composed on demand from its scene.

    Holds the scene and the 28x28 patches it places (its digits' images and its noise patterns, gathered in
    draw order: a few hundred KB, cheap to send to a DataLoader worker, unlike the whole digit pool).
    """

    channels = 1

    def __init__(self, scene: MegapixelScene, digit_images: np.ndarray, noise_patterns: np.ndarray,
                 height: int, width: int):
        self.scene = scene
        self.height, self.width = int(height), int(width)
        digits = digit_images[scene.digit_ids].astype(np.float32, copy=False)
        noise = noise_patterns[scene.noise_ids].astype(np.float32, copy=False)
        layers = [(noise, scene.noise_positions), (digits, scene.digit_positions)]
        if not scene.noise_first:
            layers.reverse()
        self._patches = np.concatenate([patches.reshape(-1, PATCH, PATCH) for patches, _ in layers])
        self._positions = np.concatenate([pos.reshape(-1, 2) for _, pos in layers]).astype(np.int64)

    def _compose(self, out: np.ndarray, top: int, left: int) -> None:
        """Assign, in draw order, every object intersecting out's window (rows top.., cols left..)."""
        bottom, right = top + out.shape[0], left + out.shape[1]
        rows, cols = self._positions[:, 0], self._positions[:, 1]
        hits = np.flatnonzero((rows < bottom) & (rows + PATCH > top) & (cols < right) & (cols + PATCH > left))
        for k in hits.tolist():
            r, c = int(rows[k]), int(cols[k])
            y0, y1 = max(r, top, 0), min(r + PATCH, bottom, self.height)
            x0, x1 = max(c, left, 0), min(c + PATCH, right, self.width)
            if y1 > y0 and x1 > x0:
                out[y0 - top : y1 - top, x0 - left : x1 - left] = self._patches[k, y0 - r : y1 - r, x0 - c : x1 - c]

    def read_region(self, top, left, height, width, downsample=1):
        self.count_read(top, left, height, width, downsample)
        out = np.zeros((height, width), np.float32)
        self._compose(out, int(top), int(left))
        return _block_mean(torch.from_numpy(out)[None], downsample)

    def render(self) -> torch.Tensor:
        """The dense (1, H, W) canvas: every object assigned in draw order (for tests and pictures)."""
        canvas = np.zeros((self.height, self.width), np.float32)
        for (r, c), patch in zip(self._positions.tolist(), self._patches):
            y0, x0 = max(r, 0), max(c, 0)
            y1, x1 = min(r + PATCH, self.height), min(c + PATCH, self.width)
            if y1 > y0 and x1 > x0:
                canvas[y0:y1, x0:x1] = patch[y0 - r : y1 - r, x0 - c : x1 - c]
        return torch.from_numpy(canvas)[None]

    def _visible_patches(self) -> np.ndarray:
        """Each object's patch with the pixels that later objects overwrite set to 0 (disjoint supports)."""
        pos = self._positions
        dy = pos[None, :, 0] - pos[:, None, 0]  # [k, j]: row of j relative to k
        dx = pos[None, :, 1] - pos[:, None, 1]
        later = np.triu(np.ones((len(pos), len(pos)), bool), 1)
        pairs = np.argwhere(later & (np.abs(dy) < PATCH) & (np.abs(dx) < PATCH))
        if len(pairs) == 0:
            return self._patches
        visible = self._patches.copy()
        for k, j in pairs.tolist():
            oy, ox = int(dy[k, j]), int(dx[k, j])
            visible[k, max(oy, 0) : min(PATCH + oy, PATCH), max(ox, 0) : min(PATCH + ox, PATCH)] = 0
        return visible

    def proxy(self, size):
        """The dense canvas area-downsampled (`F.interpolate(mode="area")`), top-left placed in size x size.

        Composed from the description: the area pooling is separable (out = R X C^T, R and C averaging the
        rows and columns of each output bin), and the objects' visible parts have disjoint supports, so each
        object adds R_k V_k C_k^T to the few output bins it touches. Equal to pooling the dense render up to
        float rounding (~1e-7); the dense path is used when the proxy would upsample or objects stick out.
        """
        self.count_proxy(size)  # as a plain image's proxy: composed from the description, it reads no pixels
        rows, cols = proxy_extent(self.height, self.width, size)
        pos = self._positions
        inside = len(pos) == 0 or (
            pos.min() >= 0 and pos[:, 0].max() + PATCH <= self.height and pos[:, 1].max() + PATCH <= self.width
        )
        out = torch.zeros(1, size, size)
        if rows > self.height or cols > self.width or not inside:
            out[:, :rows, :cols] = F.interpolate(self.render()[None], size=(rows, cols), mode="area")[0]
            return out
        if len(pos) == 0:
            return out
        row_pool, row_bins = _pool_matrix(self.height, rows)
        col_pool, col_bins = _pool_matrix(self.width, cols)
        r, c = pos[:, 0], pos[:, 1]
        span = np.arange(PATCH)
        first_row = (r * rows) // self.height  # the first output bin holding row r
        first_col = (c * cols) // self.width
        row_index = first_row[:, None] + np.arange(row_bins)  # (M, nb)
        col_index = first_col[:, None] + np.arange(col_bins)
        rk = row_pool[row_index[:, :, None], (r[:, None] + span)[:, None, :]]  # (M, nb, 28)
        ck = col_pool[col_index[:, :, None], (c[:, None] + span)[:, None, :]]  # (M, nb', 28)
        contrib = rk @ self._visible_patches() @ ck.transpose(0, 2, 1)  # (M, nb, nb')
        padded_cols = cols + col_bins
        flat = (row_index[:, :, None] * padded_cols + col_index[:, None, :]).ravel()
        pooled = np.bincount(flat, weights=contrib.ravel(), minlength=(rows + row_bins) * padded_cols)
        pooled = pooled.reshape(rows + row_bins, padded_cols)[:rows, :cols]
        out[0, :rows, :cols] = torch.from_numpy(pooled.astype(np.float32))
        return out


@functools.lru_cache(maxsize=16)
def _pool_matrix(length: int, bins: int) -> tuple[np.ndarray, int]:
    """(bins + nb, length) averaging matrix of adaptive average pooling (PyTorch's bin edges), zero rows
    appended, and nb: how many consecutive bins cover any 28 consecutive source pixels (length >= bins).

    Bin i averages [floor(i L / B), ceil((i + 1) L / B)); a source pixel p lies in bin floor(p B / L) and
    possibly the next, so pixels p..p+27 lie in bins floor(p B / L) .. floor(p B / L) + ceil(27 B / L) + 1.
    """
    span = math.ceil((PATCH - 1) * bins / length) + 2
    matrix = np.zeros((bins + span, length), np.float32)
    for i in range(bins):
        start, end = (i * length) // bins, -((-(i + 1) * length) // bins)
        matrix[i, start:end] = 1.0 / (end - start)
    matrix.flags.writeable = False
    return matrix, span


def make_noise_patterns(seed: int, split: str, count: int = 50) -> np.ndarray:
    """The split's (count, 28, 28) float32 noise patterns: a pure function of (seed, split)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split]], spawn_key=(NOISE_STREAM,)))
    slopes = np.tan(rng.random(count) * MAX_ANGLE)  # angle from the row axis, in [0, 72) degrees
    strokes = np.zeros((count, PATCH, PATCH))
    end = PATCH - 0.51  # 27.49: the last point rounds to pixel 27
    for i, slope in enumerate(slopes):
        along = np.linspace(0, min(end, end / slope) if slope > 0 else end, 2 * PATCH)  # rows
        strokes[i, np.round(along).astype(int), np.round(slope * along).astype(int)] = 1
    second = strokes[rng.permutation(count)]
    mirror = (rng.random(count) < MIRROR_PROBABILITY) ^ (rng.random(count) < MIRROR_PROBABILITY)
    second[mirror] = second[mirror][:, :, ::-1]
    ink = (strokes + second) > 0
    intensity = rng.random((count, PATCH, PATCH)) * 0.2 + 0.8
    return (np.floor(255 * intensity * ink) / 255).astype(np.float32)


@register_task("megapixel")
class MegapixelMNIST(Task):
    name = "megapixel"
    heads = (Head("majority", 10), Head("max", 10), Head("top", 10), Head("multi", 10, "multilabel"))
    image_channels = 1
    proxy_channels = 1

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        canvas_size: int = 1500,
        proxy_scale: float = 0.12,
        digits_per_image: int = 5,
        target_count: int = 3,
        noise_patches: int = 50,
        noise_patterns: int = 50,
        noise_first: bool = True,
        size: int | None = None,
        digit_source: str = "auto",
        data_dir=None,
    ):
        if not 1 <= target_count <= digits_per_image or 2 * target_count <= digits_per_image:
            raise ValueError(
                f"target_count ({target_count}) must be a strict majority of digits_per_image ({digits_per_image})"
            )
        if canvas_size < 2 * PATCH + (1 if noise_patches else 0):
            raise ValueError(
                f"canvas_size must be at least {2 * PATCH + 1} (noise lies in [28, canvas-28)), got {canvas_size}"
            )
        if digits_per_image * PATCH * PATCH > canvas_size * canvas_size // 4:
            raise ValueError(f"{digits_per_image} non-overlapping digits do not fit comfortably in {canvas_size}^2")
        if noise_patches and noise_patterns < 1:
            raise ValueError("noise_patches > 0 needs at least one noise pattern")
        if not 0 < proxy_scale <= 1:
            raise ValueError(f"proxy_scale must be in (0, 1], got {proxy_scale}")
        self.split, self.seed = split, seed
        self.canvas_size, self.proxy_scale = canvas_size, proxy_scale
        self.digits_per_image, self.target_count = digits_per_image, target_count
        self.noise_patches, self.noise_patterns_count, self.noise_first = noise_patches, noise_patterns, noise_first
        self.image_height = self.image_width = canvas_size
        self.proxy_size = max(1, round(canvas_size * proxy_scale))
        self.size = DEFAULT_SIZES[split] if size is None else size
        self.pool = digit_pool(split, digit_source, data_dir)
        self.noise_patterns = make_noise_patterns(seed, split, noise_patterns)

    def __len__(self):
        return self.size

    def scene(self, index: int) -> MegapixelScene:
        """The sparse description of image `index`: a pure function of (seed, split, index)."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        rng = sample_rng(self.seed, self.split, index)
        labels, by_class = self.pool.labels, self.pool.by_class
        # numbers (as the public script: the target, its digits, then the others)
        target = int(rng.integers(10))
        ids = list(rng.choice(by_class[target], self.target_count))
        while len(ids) < self.digits_per_image:  # uniform over the split's images whose class is not t
            k = int(rng.integers(len(labels)))
            if labels[k] != target:
                ids.append(k)
        # positions: each corner re-drawn until its box overlaps none placed before
        span = self.canvas_size - PATCH + 1
        positions = np.zeros((self.digits_per_image, 2), np.int64)
        for i in range(self.digits_per_image):
            for _ in range(MAX_PLACEMENT_TRIES):
                pos = rng.integers(0, span, size=2)
                if not (np.abs(positions[:i] - pos) < PATCH).all(axis=1).any():
                    break
            else:
                raise RuntimeError(f"could not place digit {i} without overlap in {MAX_PLACEMENT_TRIES} tries")
            positions[i] = pos
        # noise
        noise_positions = rng.integers(PATCH, self.canvas_size - PATCH, size=(self.noise_patches, 2))
        noise_ids = rng.integers(self.noise_patterns_count or 1, size=self.noise_patches)
        digit_ids = np.asarray(ids, np.int64)
        return MegapixelScene(
            target=target,
            digit_ids=digit_ids,
            digit_classes=labels[digit_ids],
            digit_positions=positions,
            noise_ids=noise_ids.astype(np.int64),
            noise_positions=noise_positions.astype(np.int64),
            noise_first=self.noise_first,
        )

    def image(self, scene: MegapixelScene) -> MegapixelImage:
        return MegapixelImage(scene, self.pool.images, self.noise_patterns, self.canvas_size, self.canvas_size)

    @staticmethod
    def labels(scene: MegapixelScene) -> dict:
        classes, pos = scene.digit_classes, scene.digit_positions
        top = np.lexsort((pos[:, 1], pos[:, 0]))[0]  # smallest row, then smallest column
        multi = torch.zeros(10)
        multi[torch.from_numpy(np.asarray(classes, np.int64))] = 1.0
        return {"majority": int(scene.target), "max": int(classes.max()), "top": int(classes[top]), "multi": multi}

    def boxes(self, scene: MegapixelScene) -> torch.Tensor:
        """(D, 4) tight (x0, y0, x1, y1) boxes of the digits' inked pixels, in draw order."""
        images, positions = self.pool.images, scene.digit_positions
        boxes = [tight_box(images[k], int(r), int(c)) for k, (r, c) in zip(scene.digit_ids, positions)]
        return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)

    def __getitem__(self, index):
        scene = self.scene(index)
        image = self.image(scene)
        proxy = image.proxy(self.proxy_size)
        return Sample(image=image, proxy=proxy, labels=self.labels(scene), boxes=self.boxes(scene))

    def describe(self):
        return {
            "name": self.name, "split": self.split, "seed": self.seed, "canvas_size": self.canvas_size,
            "proxy_scale": self.proxy_scale, "proxy_size": self.proxy_size,
            "digits_per_image": self.digits_per_image, "target_count": self.target_count,
            "noise_patches": self.noise_patches, "noise_patterns": self.noise_patterns_count,
            "noise_first": self.noise_first, "size": self.size, "digit_source": self.pool.source,
        }


def write_files(destination, sizes: dict[str, int], seed: int = 0, digit_source: str = "auto", data_dir=None,
                compression: str = "deflate", progress: bool = True, **task_options) -> Path:
    """Megapixel MNIST as a folder dataset (`vsaccade generate megapixel DST`): root/<split>/<majority class>/
    <index>.tif, tiled pyramidal grey TIFFs (lossless by default), each the canvas `MegapixelMNIST` composes lazily,
    in 8 bits. Beside the root, never inside it: DST-labels/<split>.csv (all four heads: majority, max, top, multi
    as the classes present) and DST-boxes/<split>.csv (the digits' boxes, for hit rates: task.boxes). Files already
    written are kept, so a stopped run continues; every file is written atomically."""
    from ..prepare import write_pyramidal_tiff
    from ..file_images import require_pyvips

    pyvips = require_pyvips()
    from .folder import beside, boxes_folder, check_generator_settings

    root = Path(destination)
    labels_dir, boxes_dir = beside(root, "labels"), boxes_folder(root)
    settings = {"generator": "megapixel", "seed": seed, "digit_source": digit_source, "compression": compression,
                "task_options": task_options}
    check_generator_settings(labels_dir, settings, root)
    for split, count in sizes.items():
        if count < 1:
            continue
        task = MegapixelMNIST(split, seed=seed, size=count, digit_source=digit_source, data_dir=data_dir, **task_options)
        label_rows, box_rows = [], []
        for index in tqdm(range(count), desc=f"megapixel ({split})", unit="image", disable=not progress):
            scene = task.scene(index)
            labels = task.labels(scene)
            relative = f"{labels['majority']}/{index:05d}.tif"
            path = root / split / relative
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = (task.image(scene).render()[0].numpy() * 255).round().astype(np.uint8)
                image = pyvips.Image.new_from_memory(pixels.tobytes(), pixels.shape[1], pixels.shape[0], 1, "uchar")
                write_pyramidal_tiff(image.copy(interpretation="b-w"), path, compression)
            present = ";".join(str(k) for k in np.flatnonzero(labels["multi"].numpy()))
            label_rows.append({"path": relative, "majority": labels["majority"], "max": labels["max"],
                               "top": labels["top"], "multi": present})
            box_rows += [{"path": relative, **dict(zip(("x0", "y0", "x1", "y1"), b))} for b in task.boxes(scene).tolist()]
        write_csv(labels_dir / f"{split}.csv", label_rows)
        write_csv(boxes_dir / f"{split}.csv", box_rows, ["path", "x0", "y0", "x1", "y1"])
    return root


def write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> None:
    """Write rows (dicts) as CSV, atomically."""
    from ..atomic import write_csv as write_rows

    fields = fields or list(rows[0])
    write_rows(path, fields, [[row[f] for f in fields] for row in rows])
