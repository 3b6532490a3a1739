"""The large-photo benchmark (the paper's motivating example): 4000x3000 JPEG scenes, each with at most one small
speed-limit sign on a cluttered procedural background, written as a folder dataset (`tasks/folder.py`).

Per image (a pure function of (seed, split, index)):
  * class uniform over {30, 50, 60, 70, 80, 90, 100, 120} with probability 2/3, else `none` (no sign);
  * background: low-frequency colour noise, then 60-120 random rectangles, ellipses and strokes, then decoys in
    the same sizes as signs, each with some but not all of a sign's parts: 6-12 red rings with no white disc
    (empty, or around a number or a letter), 6-12 of the classes' numbers (bare, or on a white disc with no ring);
    so only the combination of red ring and white disc marks a sign. At the proxy the ring is under a pixel
    wide, so a sign and a white-disc decoy differ only by a pinkish tint (docs/benchmarks/files.md measures how
    well the proxy shows where the sign is);
  * the sign: white disc, red ring, black number (Pillow's bundled font), side 40-120 px, rotated by up to 20
    degrees, blurred (Gaussian, radius 0-1.5 px), lit by a brightness factor in [0.6, 1.2], anywhere in the image;
  * labels from the folder name; the sign's box in `DST-boxes/<split>.csv`, beside the training root and never
    inside it, so a run reads boxes only when told to (`task.boxes`).
At the 256x192 proxy (a 15.6x reduction) a sign is 3-8 px and its number illegible: the class needs a glimpse.

Other sizes (`--size WxH`, `--sign-sides LO HI`): shape and decoy counts scale with the image's area, shape sizes
and stroke widths with its side (the square root of the area ratio), decoys take the signs' sides; at the default
4000x3000 with sides 40-120 every image is the same as before these options existed (tests/test_speed_signs.py).

    vsaccade generate speed-signs DST [--train 3000] [--test 1000] [--size 1280x960 --sign-sides 24 80]
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

from .folder import boxes_folder, check_generator_settings

CLASSES = ("30", "50", "60", "70", "80", "90", "100", "120", "none")
SPLIT_IDS = {"train": 0, "test": 1, "validation": 2}
WIDTH, HEIGHT = 4000, 3000
SIGN_SIDES = (40, 120)
SIDE_BINS = {"under 60": (0, 60), "60-79": (60, 80), "80-99": (80, 100), "100 and over": (100, 10_000)}  # sign box sides (px) that reports break down by
NONE_PROBABILITY = 1 / 3
QUALITY = 90


@dataclass(frozen=True)
class SceneSize:
    """A scene's size and its signs' sides; counts scale with area and shapes with side, relative to 4000x3000."""

    width: int = WIDTH
    height: int = HEIGHT
    sign_sides: tuple = SIGN_SIDES

    def __post_init__(self):
        low, high = self.sign_sides
        if not 4 <= low <= high or high >= min(self.width, self.height):
            raise ValueError(f"sign sides must satisfy 4 <= LO <= HI < the image's shorter side, got {low} {high} for "
                             f"{self.width}x{self.height}")

    @property
    def area(self) -> float:
        return self.width * self.height / (WIDTH * HEIGHT)

    def count(self, n: int) -> int:
        return n if self.area == 1 else max(1, round(n * self.area))

    def length(self, n: int) -> int:
        return n if self.area == 1 else max(1, round(n * self.area ** 0.5))


DEFAULT_SIZE = SceneSize()


def font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 bundles a scalable font
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def sign_patch(text: str, side: int, rng: np.random.Generator, ring: bool = True, disc: bool = True) -> Image.Image:
    """An RGBA sign: red `ring`, white `disc`, black `text` (a decoy lacks the ring or the disc), `side` px wide."""
    big = 256
    patch = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(patch)
    if ring or disc:
        draw.ellipse([4, 4, big - 5, big - 5], fill=(230, 230, 225, 255) if disc else None,
                     outline=(200, 20, 25, 255) if ring else None, width=30 if ring else 0)
    if text:
        face = font(110 if len(text) < 3 else 84)
        box = draw.textbbox((0, 0), text, font=face)
        x, y = (big - (box[2] - box[0])) / 2 - box[0], (big - (box[3] - box[1])) / 2 - box[1]
        draw.text((x, y), text, font=face, fill=(15, 15, 15, 255))
    patch = patch.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BICUBIC, expand=False)
    patch = patch.resize((side, side), Image.Resampling.LANCZOS)
    radius = float(rng.uniform(0, 1.5))
    return patch.filter(ImageFilter.GaussianBlur(radius)) if radius > 0.2 else patch


def lit(patch: Image.Image, factor: float) -> Image.Image:
    rgb = (np.asarray(patch, dtype=np.float32)[..., :3] * factor).clip(0, 255).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, np.asarray(patch)[..., 3]]), "RGBA")


def draw_shapes(draw: ImageDraw.ImageDraw, rng: np.random.Generator, count: int, x_range, y_range,
                size: SceneSize = DEFAULT_SIZE) -> None:
    """`count` random rectangles, ellipses and strokes (20-600 px at 4000x3000, scaled by `size`'s side) with
    top-left corners in the given ranges."""
    for _ in range(count):
        x, y = rng.integers(*x_range), rng.integers(*y_range)
        w, h = (size.length(int(v)) for v in rng.integers(20, 600, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle([x, y, x + w, y + h], fill=colour)
        elif kind == 1:
            draw.ellipse([x, y, x + w, y + h], fill=colour)
        else:
            draw.line([x, y, x + w * rng.choice([-1, 1]), y + h], fill=colour, width=size.length(int(rng.integers(2, 25))))


def background(rng: np.random.Generator, size: SceneSize = DEFAULT_SIZE) -> Image.Image:
    coarse = rng.uniform(40, 200, (6, 8, 3)).astype(np.uint8)
    image = Image.fromarray(coarse).resize((size.width, size.height), Image.Resampling.BICUBIC)
    draw_shapes(ImageDraw.Draw(image), rng, size.count(int(rng.integers(60, 121))), (0, size.width), (0, size.height), size)
    return image


def ring_decoy(rng: np.random.Generator, side: int) -> Image.Image:
    """A red ring with no white disc: empty, or around a number or a letter."""
    text = str(rng.choice(list(CLASSES[:-1]) + list("ABEHKXZ"))) if rng.random() < 2 / 3 else ""
    return sign_patch(text, side, rng, disc=False)


def number_decoy(rng: np.random.Generator, side: int) -> Image.Image:
    """One of the classes' numbers with no ring: bare or on a white disc."""
    return sign_patch(str(rng.choice(CLASSES[:-1])), side, rng, ring=False, disc=bool(rng.random() < 0.5))


def any_decoy(rng: np.random.Generator, side: int) -> Image.Image:
    """A ring decoy or a number decoy, at even odds."""
    return (ring_decoy if rng.random() < 0.5 else number_decoy)(rng, side)


def sign(rng: np.random.Generator, label: str, side: int) -> Image.Image:
    return lit(sign_patch(label, side, rng), float(rng.uniform(0.6, 1.2)))


def sign_box(x: int, y: int, side: int) -> list[float]:
    """The box (x0, y0, x1, y1) of a sign pasted at (x, y) with `side`: the ring's outer edge, 4/256 inside the patch."""
    inset = side * (4 / 256)
    return [x + inset, y + inset, x + side - inset, y + side - inset]


def scene(seed: int, split: str, index: int, size: SceneSize = DEFAULT_SIZE) -> tuple[Image.Image, str, list[float] | None]:
    """One image, its class name and the sign's box (x0, y0, x1, y1), or None without a sign."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    image = background(rng, size)
    low, high = size.sign_sides
    for make in (ring_decoy, number_decoy):  # 6-12 of each at 4000x3000
        for _ in range(size.count(int(rng.integers(6, 13)))):
            side = int(rng.integers(low, high + 1))
            decoy = make(rng, side)
            image.paste(decoy, (int(rng.integers(0, size.width - side)), int(rng.integers(0, size.height - side))), decoy)
    if rng.random() < NONE_PROBABILITY:
        return image, "none", None
    label = str(rng.choice(CLASSES[:-1]))
    side = int(rng.integers(low, high + 1))
    patch = sign(rng, label, side)
    x, y = int(rng.integers(0, size.width - side)), int(rng.integers(0, size.height - side))
    image.paste(patch, (x, y), patch)
    return image, label, sign_box(x, y, side)


def window_crop(seed: int, index: int, window: int, reach: int, decoys: float = 1.0,
                centred_decoy: float = 0.0) -> tuple[np.ndarray, str, list[float] | None]:
    """A square (H, W, 3) uint8 crop of side `window + 2 * reach` drawn like a scene at the scene's scale, its
    class and the sign's box as `scene` gives it (None for `none`): with a sign in 2/3 of crops (its centre up to `reach` px from the crop's centre each way), else `none`.
    For training a glimpse reader on many more signs than a benchmark's scenes hold
    (the `pretrain-reader` and `polish-reader` recipe stages, reader_stages.py): the same smooth colours, shapes (as many per area as a
    scene), `decoys` decoys on average (a scene's 12-24 in 12 Mpx put about 0.2 in a 262-px crop) and the same JPEG quality.
    With probability `centred_decoy` a `none` crop also holds a decoy where a sign would be: the hard negatives a
    model that seeks signs looks at (its draws come last, so the other crops are the same with or without it)."""
    rng = np.random.default_rng([seed, 3, index])
    side = window + 2 * reach
    # A scene's colours vary over ~500 px (a 6x8 grid over 4000x3000): over a crop, a gentle slope.
    corners = (rng.uniform(40, 200, 3) + rng.uniform(-40, 40, (2, 2, 3)) * side / 500).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(corners).resize((side, side), Image.Resampling.BICUBIC)
    reach_of_shapes = side + 600  # a shape up to 600 px wide starting this far up or left still overlaps
    shapes = rng.poisson(90 * reach_of_shapes ** 2 / (WIDTH * HEIGHT))
    draw_shapes(ImageDraw.Draw(image), rng, int(shapes), (-600, side), (-600, side))
    low, high = SIGN_SIDES
    for _ in range(int(rng.poisson(decoys))):
        size = int(rng.integers(low, high + 1))
        decoy = any_decoy(rng, size)
        image.paste(decoy, (int(rng.integers(-size // 2, side - size // 2)), int(rng.integers(-size // 2, side - size // 2))), decoy)

    def near_centre(size: int) -> tuple[int, int]:  # where a patch of `size` goes, its centre up to `reach` px off
        x, y = (side / 2 + rng.uniform(-reach, reach, 2) - size / 2).round().astype(int)
        return int(x), int(y)

    label, box = "none", None
    if rng.random() >= NONE_PROBABILITY:
        label = str(rng.choice(CLASSES[:-1]))
        size = int(rng.integers(low, high + 1))
        patch = sign(rng, label, size)
        x, y = near_centre(size)
        image.paste(patch, (x, y), patch)
        box = sign_box(x, y, size)
    elif centred_decoy and rng.random() < centred_decoy:
        size = int(rng.integers(low, high + 1))
        decoy = any_decoy(rng, size)
        image.paste(decoy, near_centre(size), decoy)
    encoded = io.BytesIO()
    image.save(encoded, format="JPEG", quality=QUALITY)
    return np.asarray(Image.open(encoded).convert("RGB")), label, box


def generate(destination, sizes: dict[str, int], seed: int = 0, progress: bool = True,
             size: SceneSize = DEFAULT_SIZE) -> Path:
    """Write root/<split>/<class>/<index>.jpg; the signs' boxes go to boxes_folder(root)/<split>.csv. Each written
    image is logged in boxes_folder(root)/<split>-index.csv at once, so a stopped run continues where it left off
    (refused if it was started with other settings)."""
    root, boxes = Path(destination), boxes_folder(destination)
    settings = {"generator": "speed-signs", "seed": seed, **asdict(size), "sign_sides": list(size.sign_sides)}
    check_generator_settings(boxes, settings, root)  # the boxes and the generation log live beside the root
    fields = ["index", "path", "label", "x0", "y0", "x1", "y1"]
    for split, count in sizes.items():
        if count < 1:
            continue
        split_dir = root / split
        split_dir.mkdir(parents=True, exist_ok=True)
        done = write_split(split_dir, boxes / f"{split}-index.csv", fields, seed, split, count, size, progress)
        with open(boxes / f"{split}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["path", "x0", "y0", "x1", "y1"])
            writer.writeheader()
            for index in sorted(done):
                row = done[index]
                if row["x0"]:
                    writer.writerow({k: row[k] for k in ("path", "x0", "y0", "x1", "y1")})
    return root


def write_split(split_dir: Path, log: Path, fields: list, seed: int, split: str, count: int, size: SceneSize,
                progress: bool) -> dict:
    """The images of one split not yet in `log`, each logged as soon as it is written; returns every logged row."""
    done = {}
    if log.exists():
        with open(log, newline="") as handle:
            done = {int(row["index"]): row for row in csv.DictReader(handle)}
    with open(log, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if handle.tell() == 0:
            writer.writeheader()
        for index in tqdm(range(count), desc=f"speed signs ({split})", unit="image", disable=not progress):
            if index in done:
                continue
            image, label, box = scene(seed, split, index, size)
            path = split_dir / label / f"{index:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.stem + ".tmp.jpg")
            image.save(tmp, quality=QUALITY)
            tmp.replace(path)
            row = {"index": index, "path": path.relative_to(split_dir).as_posix(), "label": label,
                   **dict(zip(("x0", "y0", "x1", "y1"), [f"{v:.1f}" for v in box] if box else [""] * 4))}
            writer.writerow(row)
            handle.flush()
            done[index] = row
    return done
