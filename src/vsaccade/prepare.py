"""`vsaccade prepare SRC DST`: convert a folder of images to tiled pyramidal TIFFs, the format that makes training
and prediction cheap (region reads decode only the tiles a glimpse touches; the proxy comes from a small
pyramid level). The folder layout is kept; every image is stored upright (EXIF orientation applied) as 8-bit
sRGB or grey, so `FileImage` reads it without conversion. `boxes.csv` files are copied with their paths renamed.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

from tqdm import tqdm

from .file_images import IMAGE_SUFFIXES, _first_line, require_pyvips, to_channels
from .images import ImageError

COMPRESSIONS = ("jpeg", "deflate", "lzw", "none")
TILE = 256


def prepare_image(source: Path, destination: Path, compression: str = "jpeg", quality: int = 90) -> None:
    pyvips = require_pyvips()
    if source.stat().st_size == 0:
        raise ImageError(f"{source}: empty file (0 bytes)")
    try:
        image = pyvips.Image.new_from_file(str(source), access="sequential", fail=True).autorot()
        image = to_channels(image, 1 if image.interpretation in ("b-w", "grey16") else 3)
        write_pyramidal_tiff(image, destination, compression, quality)
    except pyvips.Error as error:
        raise ImageError(f"{source}: cannot convert ({_first_line(error)})") from None


def write_pyramidal_tiff(image, destination: Path, compression: str = "jpeg", quality: int = 90) -> None:
    """Write an 8-bit sRGB or grey vips image as a tiled (TILE x TILE) pyramidal TIFF, atomically (a temporary
    file renamed into place). `prepare_image` and `vsaccade bench` both write their files through this."""
    destination = Path(destination)
    tmp = destination.with_name(destination.name + ".tmp")
    try:
        options = {"Q": quality} if compression == "jpeg" else {}
        image.tiffsave(str(tmp), tile=True, tile_width=TILE, tile_height=TILE, pyramid=True, compression=compression,
                       bigtiff=image.width * image.height * image.bands > 2**31, **options)
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


def copy_boxes(source: Path, destination: Path) -> None:
    with open(source, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(destination, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=rows[0].keys() if rows else ["path", "x0", "y0", "x1", "y1"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "path": str(Path(row["path"]).with_suffix(".tif").as_posix())})


def prepare_folder(source, destination, compression: str = "jpeg", quality: int = 90, progress: bool = True,
                   report=lambda text: print(text, file=sys.stderr)) -> tuple[int, int]:
    """Convert every image under `source` to `destination/<same relative path>.tif`; returns (converted, failed).
    Existing outputs are kept (a stopped run continues where it left off)."""
    if compression not in COMPRESSIONS:
        raise ImageError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    source, destination = Path(source), Path(destination)
    if not source.is_dir():
        raise ImageError(f"source folder not found: {source}")
    files = sorted(p for p in source.rglob("*") if p.is_file())
    done = failed = 0
    for path in tqdm(files, desc="prepare", unit="image", disable=not progress):
        relative = path.relative_to(source)
        if path.name == "boxes.csv":
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            copy_boxes(path, destination / relative)
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        target = (destination / relative).with_suffix(".tif")
        if target.exists():
            done += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            prepare_image(path, target, compression, quality)
            done += 1
        except ImageError as error:
            failed += 1
            report(f"vsaccade: skipped {path}: {str(error).replace(str(path) + ': ', '')}")
    return done, failed
