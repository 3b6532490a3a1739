"""Folder datasets: `root/<split>/<class>/<image>`, images of any size in any format pyvips reads (JPEG, PNG,
TIFF including tiled pyramidal, WebP), grey or colour, read lazily (`FileImage`).

    vsaccade train --preset folder --set task.root=/data/signs

Classes are the sorted sub-folders of `root/train`, the same for every split. Splits are `train`, `validation`
and `test`; without a `validation` folder, every 10th training image (in sorted order) is held out as the
validation split and never trained on.

The proxy (`task.proxy_size`) is a number of pixels on its longer side or a fraction of the images' longer side:
`--set task.proxy_size=0.3` is 384 for 1280x960 photos (`proxy_side`). `task.proxy_budget` caps the share of an
image's pixels that making its proxy reads (`--set task.proxy_budget=0.025`: a 4000x3000 JPEG's proxy is then
made from its 1/8 shrink-on-load, 1.6% of its pixels, so at most 248 px on its longer side).

Optional object boxes (hit rates; the box-supervised variant) come from `task.boxes`, a folder beside the root
holding `<split>.csv` (what `vsaccade generate` writes as `DST-boxes`), or else from `root/<split>/boxes.csv` (the
layout `vsaccade prepare` keeps). Columns `path,x0,y0,x1,y1`: the path relative to the split folder, matched
without its extension (so boxes written for JPEGs hold for the TIFFs `prepare` makes of them), in pixels of the
upright image.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from ..file_images import IMAGE_SUFFIXES
from ..images import ImageError, check_fits_a_glimpse
from .base import Head, Sample, Task, register_task
HOLDOUT_EVERY = 10  # without root/validation, every 10th training image is the validation split
SIDE_SAMPLE = 101  # a fractional proxy size is taken of the median longer side of this many training images at most
PROXY_MULTIPLE = 8  # a fractional proxy size is rounded to a multiple of this (model.location_cells=0: one cell each)


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.endswith(".tmp.jpg"))  # a generator's unfinished file


def beside(root, what: str) -> Path:
    """A folder beside a dataset's root, never inside it: root-boxes, root-labels (what `vsaccade generate` writes
    there a run reads only when told to)."""
    root = Path(root)
    return root.with_name(f"{root.name}-{what}")


def boxes_folder(root) -> Path:
    return beside(root, "boxes")


def check_generator_settings(folder: Path, settings: dict, root) -> None:
    """Record a generator's settings in folder/generator.json, or refuse to continue a dataset made with others."""
    import json

    from ..atomic import write_text
    from ..config import ConfigError

    path = Path(folder) / "generator.json"
    if path.exists() and json.loads(path.read_text()) != settings:
        raise ConfigError(f"{root} was generated with other settings ({path}); use a new destination")
    write_text(path, json.dumps(settings, indent=2))


def box_key(relative_path: str) -> str:
    """Boxes are matched by the image's path relative to its split folder, without the extension."""
    return Path(relative_path).with_suffix("").as_posix()


def read_boxes(path: Path) -> dict[str, list[list[float]]]:
    """{box_key(path): [[x0, y0, x1, y1], ...]} from a boxes CSV; {} where there is none."""
    if not path.exists():
        return {}
    boxes: dict[str, list[list[float]]] = {}
    with open(path, newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                boxes.setdefault(box_key(row["path"]), []).append([float(row[k]) for k in ("x0", "y0", "x1", "y1")])
            except (KeyError, TypeError, ValueError):
                raise ImageError(f"{path}, line {line}: expected columns path,x0,y0,x1,y1 with numbers") from None
    return boxes


def median_image(train_dir: Path, classes: list[str]):
    """The training image of the median longer side among at most SIDE_SAMPLE of them (headers only, evenly spaced)."""
    from ..file_images import FileImage

    paths = [path for name in classes for path in list_images(train_dir / name)]
    sides = []
    for path in paths[:: max(1, len(paths) // SIDE_SAMPLE)][:SIDE_SAMPLE]:
        try:
            image = FileImage(path)
            sides.append((max(image.height, image.width), path))
        except ImageError:  # the scan reports it with its reason
            continue
    if not sides:
        raise ImageError(f"no readable training image under {train_dir} to take the proxy's size from")
    return FileImage(sorted(sides)[len(sides) // 2][1])


def proxy_side(proxy_size: int | float, train_dir: Path, classes: list[str], budget: float = 0.0) -> int:
    """The proxy's longer side: `proxy_size` pixels, or, for a fraction in (0, 1), that fraction of the median training
    image's longer side (`median_image`) rounded to a multiple of PROXY_MULTIPLE. With a `budget` in (0, 1), the
    side is lowered by multiples of PROXY_MULTIPLE until making the median image's proxy reads at most that share of
    its pixels (FileImage.proxy_read_share: the file's shrink-on-load or pyramid level decides it). Every split
    computes it from the training images, so all agree."""
    pixels = isinstance(proxy_size, int) and not isinstance(proxy_size, bool) and proxy_size >= PROXY_MULTIPLE
    if not pixels and (not isinstance(proxy_size, float) or not 0 < proxy_size < 1):
        raise ImageError(f"task.proxy_size must be pixels (an integer >= {PROXY_MULTIPLE}) or a fraction of the images' "
                         f"longer side in (0, 1), got {proxy_size!r}")
    if not 0 <= budget < 1:
        raise ImageError(f"task.proxy_budget must be a share of the image's pixels in (0, 1), or 0 for none; "
                         f"got {budget!r}")
    if pixels and not budget:
        return proxy_size
    image = median_image(train_dir, classes)
    longer = max(image.height, image.width)
    side = proxy_size if pixels else max(PROXY_MULTIPLE, round(longer * proxy_size / PROXY_MULTIPLE) * PROXY_MULTIPLE)
    while budget and image.proxy_read_share(side) > budget:
        if side <= PROXY_MULTIPLE:
            raise ImageError(f"task.proxy_budget={budget}: even a {PROXY_MULTIPLE}-px proxy of {image.path} reads "
                             f"{image.proxy_read_share(side):.1%} of its pixels (no smaller stored level or "
                             "shrink-on-load)")
        side -= PROXY_MULTIPLE
    return side


@register_task("folder")
class FolderTask(Task):
    name = "folder"

    def __init__(self, split: str = "train", root: str | None = None, proxy_size: int | float = 256, channels: int = 3,
                 size: int | None = None, seed: int = 0, max_pixels: int = 10**10, boxes: str = "",
                 proxy_budget: float = 0.0, **ignored):
        if not root:
            raise ImageError("the folder task needs a root: --set task.root=/path/holding/train/<class>/<image>")
        if boxes and not Path(boxes).is_dir():
            raise ImageError(f"task.boxes: {boxes} is not a folder (it holds <split>.csv files of boxes)")
        self.root, self.split, self.seed = Path(root), split, seed
        train_dir = self.root / "train"
        if not train_dir.is_dir():
            raise ImageError(f"{train_dir} not found: a folder dataset is root/<split>/<class>/<image>")
        self.classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
        if len(self.classes) < 2:
            raise ImageError(f"{train_dir} holds {len(self.classes)} class folder(s); need at least 2")
        self.heads = (Head("label", len(self.classes), classes=tuple(self.classes)),)
        self.image_channels = self.proxy_channels = channels
        self.max_pixels = max_pixels
        self.proxy_size = proxy_side(proxy_size, train_dir, self.classes, proxy_budget)
        split_dir = self.root / split
        holdout = split in ("train", "validation") and not (self.root / "validation").is_dir()
        if holdout:
            split_dir = train_dir
        elif not split_dir.is_dir():
            raise ImageError(f"{split_dir} not found (splits: train, validation, test)")
        items = []
        for label, name in enumerate(self.classes):
            class_dir = split_dir / name
            if class_dir.is_dir():
                items += [(path, label) for path in list_images(class_dir)]
        if holdout:
            keep = (lambda i: i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) if split == "validation" else (lambda i: i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1)
            items = [item for i, item in enumerate(items) if keep(i)]
        if not items:
            raise ImageError(f"no images found for split {split!r} under {split_dir}")
        self.items = items[:size] if size else items
        self.split_dir, self.held_out = split_dir, holdout
        self.boxes_source = Path(boxes) / f"{split_dir.name}.csv" if boxes else split_dir / "boxes.csv"
        self.boxes = read_boxes(self.boxes_source)

    def __len__(self):
        return len(self.items)

    def class_labels(self) -> list[int]:
        """Every sample's class index, in order (train.balance_classes)."""
        return [label for _, label in self.items]

    def class_counts(self) -> dict[str, int]:
        """Images per class, every class named (0 where a split has none)."""
        counts = dict.fromkeys(self.classes, 0)
        for _, label in self.items:
            counts[self.classes[label]] += 1
        return counts

    def scan(self, progress: bool = False, min_side: int = 1) -> list[tuple[Path, str]]:
        """Open every image and make its proxy (what each sample needs first): [(path, one-line reason)] of the
        files that fail, e.g. truncated, corrupt, empty, not an image, too many pixels, or a shorter side below
        `min_side` (a glimpse's: what `vsaccade predict` refuses too)."""
        from tqdm import tqdm

        from ..file_images import FileImage

        problems = []
        for path, _ in tqdm(self.items, desc=f"scan {self.split}", disable=not progress, leave=False):
            try:
                image = FileImage(path, channels=self.image_channels, max_pixels=self.max_pixels)
                check_fits_a_glimpse(image, min_side)
                image.proxy(self.proxy_size)
            except ImageError as error:
                problems.append((path, str(error) if str(path) in str(error) else f"{path}: {error}"))
        return problems

    def exclude(self, paths) -> None:
        """Leave these files out of the split."""
        drop = {Path(p) for p in paths}
        self.items = [item for item in self.items if item[0] not in drop]
        if not self.items:
            raise ImageError(f"no readable images left for split {self.split!r} under {self.split_dir}")

    def __getitem__(self, index):
        from ..file_images import FileImage

        path, label = self.items[index]
        image = FileImage(path, channels=self.image_channels, max_pixels=self.max_pixels)
        boxes = self.boxes.get(box_key(path.relative_to(self.split_dir).as_posix()), [])
        return Sample(image=image, proxy=image.proxy(self.proxy_size), labels={"label": label},
                      boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))

    def describe(self):
        return {"name": self.name, "root": str(self.root), "split": self.split, "classes": self.classes,
                "size": len(self), "proxy_size": self.proxy_size, "channels": self.image_channels,
                "boxes": str(self.boxes_source) if self.boxes else "",
                "proxy_source": "vips thumbnail (shrink-on-load or pyramid level), area-averaged"}
