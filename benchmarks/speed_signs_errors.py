"""Where a speed-sign model's errors are (docs/benchmarks/files.md): per image of a split, through `vsaccade
predict`'s code path, whether one of its glimpses holds the sign (the window contains the whole box, at any
window size, unlike the evaluation's cover, which also asks for a window at most 4 times the sign's side), and
whether the image was read right. Errors fall into three kinds: a sign no glimpse holds, a held sign read wrong,
and a `none` image read as a number (the glimpses that seek signs land on decoys). Prints a table by the sign's
box side, and how the first window fits the signs it holds (its side and centre offset relative to the sign's
side), and writes the counts as JSON.

    python benchmarks/speed_signs_errors.py runs/speed-signs-boxes-s0/best.pt --root runs/speed-signs-tiff \
        --split validation --json runs/speed-signs-errors.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

from vsaccade.evaluate import windows_contain
from vsaccade.tasks.speed_signs import SIDE_BINS


def side_bins(side: float) -> list[str]:
    """The SIDE_BINS name of a sign of this box side, and "all"."""
    return [next(n for n, (low, high) in SIDE_BINS.items() if low <= side < high), "all"]


def tally(rows: list[dict], boxes: dict, glimpses: int) -> dict:
    """Counts over predict's CSV rows: per side bin and in all, for signs; read right, for `none` images."""
    signs: dict[str, Counter] = {name: Counter() for name in [*SIDE_BINS, "all"]}
    none = Counter()
    for row in rows:
        relative = "/".join(Path(row["path"]).parts[-2:])
        truth, right = relative.split("/")[0], row["label"] == relative.split("/")[0]
        if truth == "none":
            none["images"] += 1
            none["read right"] += right
            continue
        box = boxes[relative][0]
        windows = [[float(row[f"glimpse{t}_{k}"]) for k in ("x0", "y0", "x1", "y1")] for t in range(1, glimpses + 1)]
        held = windows_contain(torch.tensor(windows), torch.tensor([box]))[:, 0].tolist()
        side = box[2] - box[0]
        for name in side_bins(side):
            counts = signs[name]
            counts["signs"] += 1
            counts["held by a glimpse"] += any(held)
            counts["held by the first"] += held[0]
            counts["read right"] += right
            counts["held, read wrong"] += any(held) and not right
            counts["not held, read as none"] += not any(held) and row["label"] == "none"
    return {"signs": {name: dict(c) for name, c in signs.items()}, "none": dict(none)}


def first_window_fit(rows: list[dict], boxes: dict) -> dict:
    """Per side bin and in all, over the signs the first glimpse holds: the median of its window's side over the
    sign's side, and of its centre's distance from the sign's centre (the larger of x and y) over the sign's side.
    What `objective.window_weight` trains (towards box_window_scale and 0)."""
    ratios: dict[str, list] = {name: [] for name in [*SIDE_BINS, "all"]}
    offsets: dict[str, list] = {name: [] for name in [*SIDE_BINS, "all"]}
    for row in rows:
        relative = "/".join(Path(row["path"]).parts[-2:])
        if relative.split("/")[0] == "none":
            continue
        box = torch.tensor(boxes[relative][0])
        window = torch.tensor([float(row[f"glimpse1_{k}"]) for k in ("x0", "y0", "x1", "y1")])
        if not windows_contain(window[None], box[None])[0, 0]:
            continue
        side = float(box[2] - box[0])
        offset = float(((window[:2] + window[2:]) / 2 - (box[:2] + box[2:]) / 2).abs().max()) / side
        for name in side_bins(side):
            ratios[name].append(float(window[2] - window[0]) / side)
            offsets[name].append(offset)
    return {name: {"held by the first": len(ratios[name]),
                   "median window side / sign side": float(torch.tensor(ratios[name]).median()) if ratios[name] else None,
                   "median centre offset / sign side": float(torch.tensor(offsets[name]).median()) if offsets[name] else None}
            for name in ratios}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--root", required=True, help="a prepared speed-sign folder dataset (with boxes.csv)")
    parser.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    parser.add_argument("--set", action="append", default=[], metavar="model.FIELD=VALUE", help="a test-time setting")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from vsaccade.checkpoint import load, with_test_time_settings
    from vsaccade.predict_files import predict_paths
    from vsaccade.tasks import make_task
    from vsaccade.tasks.folder import read_boxes

    torch.set_num_threads(args.threads)
    model = with_test_time_settings(load(args.checkpoint), args.set)
    task = make_task("folder", args.split, root=args.root, proxy_size=model.config.proxy_size, channels=model.config.image_channels)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "predictions.csv"
        _, failed = predict_paths(model, [str(path) for path, _ in task.items], out)
        if failed:
            sys.exit(f"{failed} file(s) could not be read")
        rows = list(csv.DictReader(open(out, newline="")))
    boxes = read_boxes(task.split_dir)
    counts = tally(rows, boxes, model.config.glimpses)
    counts["first window fit"] = first_window_fit(rows, boxes)
    right = counts["signs"]["all"].get("read right", 0) + counts["none"].get("read right", 0)
    counts.update(command="python benchmarks/speed_signs_errors.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  split=args.split, images=len(rows), accuracy=right / len(rows))
    print(f"{args.split}: {len(rows)} images, accuracy {right / len(rows):.1%}; none read right "
          f"{counts['none'].get('read right', 0)} of {counts['none'].get('images', 0)}")
    columns = ["signs", "held by a glimpse", "held by the first", "read right", "held, read wrong", "not held, read as none"]
    print("| sign side | " + " | ".join(columns) + " |")
    for name, c in counts["signs"].items():
        print(f"| {name} | " + " | ".join(str(c.get(column, 0)) for column in columns) + " |")
    print("first glimpse, where it holds the sign: median window side / sign side, median centre offset / sign side: "
          + "; ".join(f"{name} {fit['median window side / sign side'] or 0:.2f}, {fit['median centre offset / sign side'] or 0:.2f}"
                      for name, fit in counts["first window fit"].items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(counts, indent=2))


if __name__ == "__main__":
    main()
