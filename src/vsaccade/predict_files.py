"""`vsaccade predict CKPT PATH...`: classify image files and folders, write one CSV row per image (predicted
class, class probabilities, each glimpse's box in pixels of the upright original), optionally overlay PNGs.

An unreadable file is reported (path and reason) and skipped; the others finish. `predict_paths` returns the
number of failures, so the command's exit status can say whether any occurred.
"""

from __future__ import annotations

import csv
import glob
import sys
from pathlib import Path

from tqdm import tqdm

from .file_images import IMAGE_SUFFIXES
from .images import ImageError


def expand_paths(patterns: list[str]) -> list[Path]:
    """Files, folders (searched recursively for image files) and globs -> a sorted, de-duplicated list of files.
    A pattern that matches nothing is kept, so that it is reported as missing."""
    found: list[Path] = []
    for pattern in patterns:
        matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))] or [Path(pattern)]
        for match in matches:
            if match.is_dir():
                found += sorted(p for p in match.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            else:
                found.append(match)
    return list(dict.fromkeys(found))


def class_names(head: dict) -> list[str]:
    return [str(c) for c in head.get("classes") or range(head["num_classes"])]


def header(model) -> list[str]:
    columns = ["path"]
    for head in model.config.heads:
        columns.append(head["name"])
        columns += [f"{head['name']}_p_{name}" for name in class_names(head)]
    for t in range(1, model.glimpses_per_image + 1):
        columns += [f"glimpse{t}_{k}" for k in ("x0", "y0", "x1", "y1")]
    return columns


def row(model, path: Path, prediction) -> list:
    values: list = [str(path)]
    for head in model.config.heads:
        names, probs = class_names(head), prediction.probabilities[head["name"]]
        if head["kind"] == "multilabel":
            values.append(" ".join(n for n, p in zip(names, probs.tolist()) if p > 0.5))
        else:
            values.append(names[int(probs.argmax())])
        values += [f"{p:.6f}" for p in probs.tolist()]
    for box in prediction.boxes.tolist():
        values += [f"{c:.1f}" for c in box]
    return values


def predict_paths(model, patterns: list[str], out_csv, policy: str = "mode", overlay_dir=None, progress: bool = True,
                  report=lambda text: print(text, file=sys.stderr)) -> tuple[int, int]:
    """Predict every image the patterns name; returns (predicted, failed)."""
    from .api import open_image, predict
    from .show import draw_overlay

    paths = expand_paths(patterns)
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    done = failed = 0
    with open(out_csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header(model))
        for path in tqdm(paths, desc="predict", unit="image", disable=not progress):
            try:
                image = open_image(path, model.config.image_channels)
                prediction = predict(model, image, policy)
            except (ImageError, OSError) as error:
                failed += 1
                message = " ".join(str(error).split()) or type(error).__name__
                report(f"vsaccade: skipped {path}: {message.replace(str(path) + ': ', '')}")
                continue
            values = row(model, path, prediction)
            writer.writerow(values)
            done += 1
            if overlay_dir:
                caption = f"{model.config.heads[0]['name']}: {values[1]}"
                draw_overlay(image, prediction.boxes, caption, Path(overlay_dir) / f"{path.stem}-{done:05d}.png")
    return done, failed
