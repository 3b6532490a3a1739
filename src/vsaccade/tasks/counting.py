"""Counting units in large rendered scenes, with a mini-map as the proxy (the StarCraft II experiment's analogue).

Per scene (`scene_size` x `scene_size` RGB, default 2048), a pure function of (seed, split, index):
  * terrain: a smooth procedural texture (a split-wide tile of multi-octave value noise, per-scene offset and tint);
  * units: k targets, k ~ Poisson(`mean_targets`) clipped at `max_targets` (K), and m distractors,
    m ~ Poisson(`mean_distractors`) clipped at K, gathered in 1-3 groups as in a battle: each group a disc of radius
    uniform in [60, `group_radius`] px (200 at most) around a uniform centre; each unit uniform in its group's disc.
    Units are discs of diameter uniform in [24, 40] px, shaded by a light from the top-left, in one of the palette's
    team colours, rotated uniformly, drawn in a random order (later units partly occlude earlier ones).
  * targets and distractors share palette, size and shading and differ only in the mark on the body: a target
    carries one bright bar, a distractor two parallel bars each half as thick with a gap between them (the same
    ink). The gap is 2-3.6 px: whole at full and half scale, blurred at quarter scale (faded, not gone);
  * the proxy is a separate modality, a `minimap` x `minimap` (64) single-channel mini-map with one dot of one
    colour per unit (position only: targets and distractors look the same there);
  * label: `count` = k (K + 1 classes, ordinal: evaluation reports the mean absolute count error too);
    boxes: the targets' discs.
`downsample` = d > 1 gives the scene as seen at 1/d scale (size // d), for the check that the count needs full
resolution. The scene is never rendered whole: `CountingImage.read_region` composes terrain and the units that
intersect the window.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..images import LargeImage, _block_mean
from .base import Head, Sample, Task, register_task
from .digit_pool import SPLIT_IDS, sample_rng

DEFAULT_SIZES = {"train": 4000, "validation": 500, "test": 1000}
UNIT_SIZES = (24, 40)  # unit diameter range, pixels
MIN_GROUP_RADIUS = 60
PALETTE = np.array([[0.80, 0.25, 0.20], [0.25, 0.45, 0.85], [0.85, 0.75, 0.25]], np.float32)  # team colours
MARK = np.array([0.95, 0.95, 0.90], np.float32)
TERRAIN_TILE = 512
TERRAIN_STREAM = 0x7465727261  # "terra"


@dataclass(frozen=True)
class CountingScene:
    """The sparse description of one scene. Units are listed in draw order."""

    centres: np.ndarray  # (N, 2) float (x, y) unit centres, pixels
    diameters: np.ndarray  # (N,) float
    angles: np.ndarray  # (N,) radians, the mark's orientation
    colours: np.ndarray  # (N,) int, palette index
    is_target: np.ndarray  # (N,) bool
    terrain_offset: tuple  # (dy, dx) into the split's terrain tile
    terrain_tint: np.ndarray  # (3,) float

    @property
    def count(self) -> int:
        return int(self.is_target.sum())


def unit_side(diameter: float) -> int:
    return int(math.ceil(diameter)) + 3


def render_unit(diameter: float, angle: float, colour: np.ndarray, target: bool, cx: float,
                cy: float) -> tuple[np.ndarray, np.ndarray]:
    """(3, S, S) colour and (S, S) alpha of one unit centred at (cx, cy) in patch pixels (pixel j spans [j, j+1)),
    S = unit_side(diameter); antialiased edges."""
    side = unit_side(diameter)
    radius = diameter / 2
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    x, y = xs - cx, ys - cy
    distance = np.hypot(x, y)
    alpha = np.clip(radius - distance + 0.5, 0, 1)
    light = 0.55 + 0.45 * np.clip(1 - np.hypot(x + 0.35 * radius, y + 0.35 * radius) / (1.6 * radius), 0, 1)
    rim = np.clip(distance - (radius - 2.0), 0, 1) * 0.45  # a darker outline
    body = colour[:, None, None] * (light - rim)[None]
    # the mark, in the unit's rotated frame: along = a, across = b
    a = x * math.cos(angle) + y * math.sin(angle)
    b = -x * math.sin(angle) + y * math.cos(angle)
    length, width = 1.1 * radius, 0.36 * radius
    if target:
        across = np.clip(width / 2 - np.abs(b) + 0.5, 0, 1)
    else:  # two bars, each width / 2 thick, a gap of width / 2 between them
        offset = width / 2
        across = np.clip(width / 4 - np.abs(np.abs(b) - offset) + 0.5, 0, 1)
    mark = across * np.clip(length / 2 - np.abs(a) + 0.5, 0, 1) * alpha
    pixels = body * (1 - mark) + MARK[:, None, None] * mark
    return pixels.astype(np.float32), alpha.astype(np.float32)


@functools.lru_cache(maxsize=8)
def terrain_tile(seed: int, split: str) -> np.ndarray:
    """(TERRAIN_TILE, TERRAIN_TILE) smooth value noise in [0, 1], tileable, shared by a split."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split]], spawn_key=(TERRAIN_STREAM,)))
    tile = np.zeros((TERRAIN_TILE, TERRAIN_TILE), np.float32)
    for octave, weight in ((8, 0.5), (32, 0.3), (128, 0.2)):
        grid = torch.from_numpy(rng.random((octave, octave)).astype(np.float32))
        wrapped = torch.cat([grid, grid[:1]], 0)
        wrapped = torch.cat([wrapped, wrapped[:, :1]], 1)[None, None]
        up = torch.nn.functional.interpolate(wrapped, size=(TERRAIN_TILE + 1,) * 2,
                                             mode="bilinear", align_corners=True)[0, 0, :TERRAIN_TILE, :TERRAIN_TILE]
        tile += weight * up.numpy()
    tile.flags.writeable = False
    return tile


class CountingImage(LargeImage):
    """A counting scene composed on demand: terrain for the window, then the units that intersect it."""

    channels = 3

    def __init__(self, scene: CountingScene, tile: np.ndarray, size: int, downsample: int = 1):
        self.scene, self.tile = scene, tile
        self.full_size, self.scale = size, downsample
        self.height = self.width = size // downsample
        self._units = None

    def units(self):
        """[(x0, y0, colour (3, S, S), alpha (S, S))] in full-scale pixels, rendered once per image."""
        if self._units is None:
            s, self._units = self.scene, []
            for (cx, cy), d, angle, colour, target in zip(s.centres, s.diameters, s.angles, s.colours, s.is_target):
                half = unit_side(float(d)) // 2
                x0, y0 = int(math.floor(cx)) - half, int(math.floor(cy)) - half
                pixels, alpha = render_unit(float(d), float(angle), PALETTE[colour], bool(target), cx - x0, cy - y0)
                self._units.append((x0, y0, pixels, alpha))
        return self._units

    def _compose(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """(3, height, width) full-scale pixels of rows top.., cols left.. (zero outside the scene)."""
        rows = (np.arange(top, top + height) + self.scene.terrain_offset[0]) % TERRAIN_TILE
        cols = (np.arange(left, left + width) + self.scene.terrain_offset[1]) % TERRAIN_TILE
        ground = self.tile[rows[:, None], cols[None, :]]
        out = self.scene.terrain_tint[:, None, None] * (0.6 + 0.4 * ground[None])
        for x0, y0, pixels, alpha in self.units():
            side = alpha.shape[0]
            ya, yb = max(y0, top), min(y0 + side, top + height)
            xa, xb = max(x0, left), min(x0 + side, left + width)
            if yb > ya and xb > xa:
                a = alpha[ya - y0:yb - y0, xa - x0:xb - x0]
                region = out[:, ya - top:yb - top, xa - left:xb - left]
                region *= 1 - a
                region += a * pixels[:, ya - y0:yb - y0, xa - x0:xb - x0]
        inside_rows = (np.arange(top, top + height) >= 0) & (np.arange(top, top + height) < self.full_size)
        inside_cols = (np.arange(left, left + width) >= 0) & (np.arange(left, left + width) < self.full_size)
        return (out * (inside_rows[:, None] & inside_cols[None, :])).astype(np.float32)

    def read_region(self, top, left, height, width, downsample=1):
        self.count_read(top, left, height, width, downsample)
        top, left, height, width, d = int(top), int(left), int(height), int(width), int(downsample) * self.scale
        if self.scale == 1:
            return _block_mean(torch.from_numpy(self._compose(top, left, height, width)), d)
        # a downsampled scene: each of its pixels is the mean of a scale x scale block of the full scene
        full = self._compose(top * self.scale, left * self.scale, height * self.scale, width * self.scale)
        return _block_mean(torch.from_numpy(full), d)


@register_task("counting")
class CountingScenes(Task):
    name = "counting"
    image_channels = 3
    proxy_channels = 1

    def __init__(self, split: str = "train", seed: int = 0, scene_size: int = 2048, minimap: int = 64,
                 max_targets: int = 12, mean_targets: float = 3.0, mean_distractors: float = 3.0,
                 group_radius: float = 200.0, downsample: int = 1, size: int | None = None, **ignored):
        if scene_size <= 2 * (group_radius + UNIT_SIZES[1]):
            raise ValueError(f"scene_size ({scene_size}) must exceed 2 x (group_radius + {UNIT_SIZES[1]}) "
                             f"= {2 * (group_radius + UNIT_SIZES[1])}")
        if not 60 <= group_radius <= 200:
            raise ValueError(f"group_radius must lie in [60, 200] pixels, got {group_radius}")
        if max_targets < 1 or minimap < 8 or downsample < 1:
            raise ValueError("need max_targets >= 1, minimap >= 8 and downsample >= 1")
        self.split, self.seed = split, seed
        self.scene_size, self.minimap, self.downsample = scene_size, minimap, downsample
        self.max_targets, self.mean_targets, self.mean_distractors = max_targets, mean_targets, mean_distractors
        self.group_radius = group_radius
        self.heads = (Head("count", max_targets + 1, "count"),)
        self.proxy_size = minimap
        self.image_height = self.image_width = scene_size // downsample
        self.size = DEFAULT_SIZES[split] if size is None else size
        self.tile = terrain_tile(seed, split)

    def __len__(self):
        return self.size

    def scene(self, index: int) -> CountingScene:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        rng = sample_rng(self.seed, self.split, index)
        k = min(int(rng.poisson(self.mean_targets)), self.max_targets)
        m = min(int(rng.poisson(self.mean_distractors)), self.max_targets)
        groups = int(rng.integers(1, 4))
        radii = rng.uniform(MIN_GROUP_RADIUS, self.group_radius, groups)
        margin = self.group_radius + UNIT_SIZES[1]
        group_centres = rng.uniform(margin, self.scene_size - margin, (groups, 2))
        n = k + m
        which = rng.integers(groups, size=n)
        r = radii[which] * np.sqrt(rng.random(n))
        theta = rng.random(n) * 2 * math.pi
        centres = group_centres[which] + np.stack([r * np.cos(theta), r * np.sin(theta)], -1)
        is_target = np.zeros(n, bool)
        is_target[:k] = True
        order = rng.permutation(n)
        return CountingScene(
            centres=centres[order], diameters=rng.uniform(*UNIT_SIZES, n)[order], angles=rng.random(n) * math.pi,
            colours=rng.integers(len(PALETTE), size=n), is_target=is_target[order],
            terrain_offset=tuple(int(v) for v in rng.integers(TERRAIN_TILE, size=2)),
            terrain_tint=(np.array([0.35, 0.42, 0.25]) + rng.uniform(-0.08, 0.08, 3)).astype(np.float32))

    def class_labels(self) -> list[int]:
        """The count of every sample (for class-balanced sampling), without rendering anything."""
        return [self.scene(i).count for i in range(len(self))]

    def minimap_of(self, scene: CountingScene) -> torch.Tensor:
        """(1, P, P): one dot (value 1, about 1.5 mini-map pixels across) per unit, target or not."""
        p = self.minimap
        ys, xs = np.mgrid[0:p, 0:p].astype(np.float32) + 0.5
        out = np.zeros((p, p), np.float32)
        for cx, cy in scene.centres * (p / self.scene_size):
            out = np.maximum(out, np.clip(1.25 - np.hypot(xs - cx, ys - cy), 0, 1))
        return torch.from_numpy(out.astype(np.float32))[None]

    def boxes(self, scene: CountingScene) -> torch.Tensor:
        c, r = scene.centres[scene.is_target], scene.diameters[scene.is_target, None] / 2
        return torch.from_numpy(np.concatenate([c - r, c + r], 1).astype(np.float32) / self.downsample).reshape(-1, 4)

    def __getitem__(self, index):
        scene = self.scene(index)
        image = CountingImage(scene, self.tile, self.scene_size, self.downsample)
        return Sample(image=image, proxy=self.minimap_of(scene), labels={"count": scene.count}, boxes=self.boxes(scene))

    def describe(self):
        return {"name": self.name, "split": self.split, "seed": self.seed, "scene_size": self.scene_size,
                "minimap": self.minimap, "max_targets": self.max_targets, "mean_targets": self.mean_targets,
                "mean_distractors": self.mean_distractors, "group_radius": self.group_radius,
                "downsample": self.downsample, "size": self.size, "proxy_source": "mini-map (a dot per unit)"}
