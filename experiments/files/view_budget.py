"""What making the low-resolution view costs at DSLR scale: the share of a 4000x3000 photo's pixels that a view of
each side reads (the level its thumbnail shrinks from, by the project's one definition of pixels read), for the
JPEG and for the tiled pyramidal TIFF `vsaccade prepare` makes of it, and the side `task.proxy_budget` chooses.

    python experiments/files/view_budget.py --work /tmp/view-budget --json docs/results/view-budget.json
"""

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from vsaccade import FileImage, make_task

SIDES = {"0.3 of the longer side (the folder preset)": 0.3, "256 px (the speed-signs presets)": 256}
BUDGET = 0.025


def write_folder(root: Path, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    for name in ("sign", "none"):
        (root / "train" / name).mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "train" / name / "0.jpg", quality=90)


def shares(root: Path) -> dict:
    """{row: {"view side": pixels, "read [%]": share read, measured by the image's own counter}}"""
    rows = {}
    settings = [(label, size, 0.0) for label, size in SIDES.items()]
    settings.append((f"0.3 of the longer side, task.proxy_budget={BUDGET}", 0.3, BUDGET))
    for label, size, budget in settings:
        task = make_task("folder", "train", root=str(root), proxy_size=size, proxy_budget=budget)
        path = next((root / "train" / "none").iterdir())
        image = FileImage(path)
        image.proxy(task.proxy_size)
        rows[label] = {"view side": task.proxy_size, "read [%]": image.pixels_requested / (image.height * image.width)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a folder for the generated photos")
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    write_folder(args.work / "jpeg", width, height)
    subprocess.run(["vsaccade", "prepare", str(args.work / "jpeg"), str(args.work / "tiff"),
                    "--no-progress"], check=True)
    measurements = {}
    for kind in ("jpeg", "tiff"):
        for label, row in shares(args.work / kind).items():
            measurements[f"{'JPEG' if kind == 'jpeg' else 'tiled pyramidal TIFF'} {args.size}, view {label}"] = row
    for name, row in measurements.items():
        print(f"{name}: side {row['view side']}, reads {row['read [%]']:.2%} of the pixels")
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        summary = {
            "name": "What the low-resolution view reads at DSLR scale: the share of the photo's pixels per view side",
            "task": f"one {args.size} JPEG of noise (Q90) and the tiled pyramidal TIFF `vsaccade prepare` makes of it",
            "preset": "folder", "seeds": [], "metrics": {}, "controls": {}, "supervision": "-", "minutes": None,
            "images_seen": None, "pixels_read": None, "commit": commit,
            "command": f"python experiments/files/view_budget.py --work WORK --size {args.size} --json {args.json}",
            "note": "The view is shrunk from a thumbnail twice its size (file_images.PROXY_OVERSAMPLE), made from the "
                    "smallest JPEG shrink-on-load (1/2, 1/4, 1/8) or pyramid level that holds it; the share is that "
                    "level's pixels over the photo's, counted by the image's own counter (FileImage.pixels_requested) "
                    "after making the view. No model: glimpses come on top (4 of 64x64 read from pyramid levels).",
            "measurements": measurements}
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
