"""Training and prediction throughput from image files: the same folder dataset as baseline JPEGs and as tiled
pyramidal TIFFs (`vsaccade prepare`), measured side by side (docs/benchmarks/files.md).

    python experiments/files/files_throughput.py --jpeg runs/speed-signs --tiff runs/speed-signs-tiff \
        --checkpoint runs/speed-signs-s0/best.pt --json runs/files-throughput.json

Per repeat, sources interleaved (JPEG, TIFF, JPEG, ...):
  * train: `--train-batches` optimiser steps of the checkpoint's model (a copy, so every repeat starts from the
    same weights) on the same training images in the same order, data loading in the training process (as
    `vsaccade train` does by default): images per second, and the share of the time spent building batches
    (opening files, reading proxies; glimpse reads happen inside the model's forward);
  * predict: `vsaccade.predict` on each of the first `--predict-images` test images, by path (what `vsaccade
    predict` runs per file, without writing its CSV): images per second.
Medians over repeats; torch threads pinned; the 1-minute load average recorded before each measurement.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import vsaccade
from vsaccade import Objective, ObjectiveConfig, collate, make_task


def train_throughput(model, objective, task, indices: list[int], batch_size: int) -> dict:
    model = copy.deepcopy(model).train()
    loss_of = Objective(objective, model.config.estimator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    data_seconds = step_seconds = 0.0
    for start in range(0, len(indices), batch_size):
        t0 = time.perf_counter()
        batch = collate([task[i] for i in indices[start : start + batch_size]])
        t1 = time.perf_counter()
        output = model(batch.images, batch.proxy, batch.proxy_mask)
        loss = loss_of(output, batch.labels, model.config.heads, objective.beta)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        data_seconds += t1 - t0
        step_seconds += time.perf_counter() - t1
    total = data_seconds + step_seconds
    return {"images": len(indices), "seconds": total, "images_per_second": len(indices) / total,
            "batch_building_fraction": data_seconds / total}


def predict_throughput(model, paths: list[Path]) -> dict:
    started = time.perf_counter()
    for path in paths:
        vsaccade.predict(model, path)
    seconds = time.perf_counter() - started
    return {"images": len(paths), "seconds": seconds, "images_per_second": len(paths) / seconds}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jpeg", required=True, help="folder dataset of baseline JPEGs")
    parser.add_argument("--tiff", required=True, help="the same dataset after `vsaccade prepare`")
    parser.add_argument("--checkpoint", required=True, help="a model trained on the dataset (its weights do not change the cost much, its glimpse count and size do)")
    parser.add_argument("--train-batches", type=int, default=8)
    parser.add_argument("--predict-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="runs/files-throughput.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = vsaccade.load(args.checkpoint)
    objective = ObjectiveConfig.from_dict(model.checkpoint["objective_config"])
    options = model.checkpoint["train_config"]["task_options"]
    options = {k: v for k, v in options.items() if k != "root"}
    sources = {"jpeg": Path(args.jpeg), "tiff": Path(args.tiff)}
    tasks = {name: make_task("folder", "train", root=str(root), **options) for name, root in sources.items()}
    batch_size = model.checkpoint["train_config"]["batch_size"]
    indices = torch.randperm(len(tasks["jpeg"]), generator=torch.Generator().manual_seed(0))[: args.train_batches * batch_size].tolist()
    for i in indices[:3]:  # the two folders must hold the same images in the same order
        a, b = tasks["jpeg"].items[i], tasks["tiff"].items[i]
        if a[0].stem != b[0].stem or a[1] != b[1]:
            raise SystemExit(f"{sources['jpeg']} and {sources['tiff']} do not hold the same images ({a[0]} vs {b[0]})")
    test_tasks = {name: make_task("folder", "test", root=str(root), **options) for name, root in sources.items()}
    test_paths = {name: [path for path, _ in task.items[: args.predict_images]] for name, task in test_tasks.items()}

    runs = {name: {"train": [], "predict": []} for name in sources}
    for repeat in range(args.repeats):
        for name in sources:
            load = os.getloadavg()[0]
            result = train_throughput(model, objective, tasks[name], indices, batch_size)
            runs[name]["train"].append({**result, "load_1min_before": load})
            load = os.getloadavg()[0]
            result = predict_throughput(model, test_paths[name])
            runs[name]["predict"].append({**result, "load_1min_before": load})
            print(f"repeat {repeat + 1}/{args.repeats} {name}: train {runs[name]['train'][-1]['images_per_second']:.1f} img/s "
                  f"(batch building {100 * runs[name]['train'][-1]['batch_building_fraction']:.0f}%), "
                  f"predict {runs[name]['predict'][-1]['images_per_second']:.1f} img/s", file=sys.stderr)

    summary = {name: {kind: statistics.median(r["images_per_second"] for r in runs[name][kind]) for kind in ("train", "predict")}
               for name in sources}
    report = {
        "command": "python experiments/files/files_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "checkpoint": args.checkpoint, "sources": {k: str(v) for k, v in sources.items()},
        "train_images_per_repeat": len(indices), "predict_images_per_repeat": args.predict_images,
        "batch_size": batch_size, "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "median_images_per_second": summary,
        "tiff_over_jpeg": {kind: summary["tiff"][kind] / summary["jpeg"][kind] for kind in ("train", "predict")},
        "runs": runs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    for name in sources:
        print(f"{name}: train {summary[name]['train']:.1f} img/s, predict {summary[name]['predict']:.1f} img/s (median of {args.repeats})")
    print(f"tiff / jpeg: train {report['tiff_over_jpeg']['train']:.2f}x, predict {report['tiff_over_jpeg']['predict']:.2f}x; {args.json}")
    return report


if __name__ == "__main__":
    main()
