"""Inference cost of the counting models (docs/benchmarks/counting.md): ours, `fullres` and `proxy` on counting
scenes of 768x768 and 2048x2048, measured side by side with `vsaccade bench`'s instruments (vsaccade.Instrument).

    python experiments/counting/counting_cost.py --out docs/benchmarks/counting-cost.json

`vsaccade bench` itself measures Megapixel MNIST canvases (1 channel, a proxy built from the pixels); here the input
is a counting scene (RGB, rendered densely once and held in memory as an ArrayImage) and the proxy is its 64x64
mini-map, given with the scene (a separate modality: nothing is built from the pixels). Models are built from the
`counting-768` / `counting` presets' model sections with random weights (cost does not depend on training),
eval mode, posterior mode, batch 1. Latency: 2 warm-up calls per model, then --repeats calls with the models
interleaved round-robin, median and IQR; peak live tensor bytes of one call and its FLOPs (conv/matmul only,
torch.utils.flop_counter) through `vsaccade.Instrument(tensors=True)` and `Instrument(flops=True)`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from vsaccade import ArrayImage, Instrument, collate, create_model, make_task, model_config_for, resolve

PRESET = {768: "counting-768", 2048: "counting"}


def scene(size: int):
    preset = resolve(PRESET[size])[2].task_options
    task = make_task("counting", "test", size=1, **preset)
    batch = collate([task[0]])
    dense = ArrayImage(batch.images[0].read_region(0, 0, size, size))
    return task, dense, batch.proxy, batch.proxy_mask


def summary_ms(seconds: list[float]) -> dict:
    ms = sorted(1000 * s for s in seconds)
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) >= 2 else (ms[0], None, ms[0])
    return {"median": statistics.median(ms), "q1": q1, "q3": q3, "iqr": q3 - q1, "min": ms[0], "max": ms[-1],
            "repeats": len(ms), "samples": [round(v, 4) for v in ms]}


def wall_time(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[768, 2048], choices=sorted(PRESET))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/counting-cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {"command": "python experiments/counting/counting_cost.py " + " ".join(
                  f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                  for k, v in vars(args).items()),
              "threads": args.threads, "cpus": os.cpu_count(), "platform": platform.platform(),
              "load_average_1min_at_start": os.getloadavg()[0], "torch": torch.__version__, "rows": []}
    for size in args.sizes:
        task, image, proxy, mask = scene(size)
        base = model_config_for(task, resolve(PRESET[size])[0])
        models = {name: create_model(**base.replace(architecture=name).to_dict()).eval()
                  for name in ("saccader", "fullres", "proxy")}
        calls = {name: (lambda m=model: m([image], proxy, mask, sample=False)) for name, model in models.items()}
        times = {name: [] for name in models}
        with torch.no_grad():
            for name, call in calls.items():
                for _ in range(2):
                    call()
            for round_ in range(args.repeats):
                names = list(calls)
                names = names[round_ % len(names):] + names[:round_ % len(names)]
                for name in names:
                    times[name].append(wall_time(calls[name]))
            for name, call in calls.items():
                with Instrument(tensors=True) as tracked:
                    tracked.attach([image])
                    call()
                read, _ = tracked.reads()  # one call's reads (LargeImage's definition)
                with Instrument(flops=True) as counted:
                    call()
                flops = counted.flops
                row = {"size": size, "model": name, "latency_ms": summary_ms(times[name]),
                       "peak_tensor_bytes": tracked.peak_bytes(), "flops_conv_matmul": flops,
                       "parameters": sum(p.numel() for p in models[name].parameters()),
                       "pixels_read": read}
                report["rows"].append(row)
                print(f"{size}x{size} {name:9s} {row['latency_ms']['median']:8.1f} ms [IQR {row['latency_ms']['iqr']:.1f}]"
                      f"  peak tensors {row['peak_tensor_bytes'] / 2**20:8.1f} MiB  {flops / 1e9:7.2f} GFLOP"
                      f"  pixels read {row['pixels_read']}")
    report["load_average_1min_at_end"] = os.getloadavg()[0]
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
