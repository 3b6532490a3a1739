"""`vsaccade predict` on one image file: peak RSS above the post-import, post-model-load baseline, and latency,
for tiled pyramidal TIFFs of growing size and a 24-megapixel baseline JPEG (docs/benchmarks/files.md).

    python experiments/files/files_predict.py --sizes 2000 20000 --json runs/files-predict.json

Each (file, repeat) runs in a fresh subprocess: import vsaccade, load the model (--checkpoint; by default build
the folder preset's RGB model, untrained), record RSS, reset the peak (/proc/self/clear_refs), open the file
(`vsaccade.FileImage`) and predict once, read the peak (VmHWM). Latency is the median over `--repeats` predicts
in that process after one warm-up. Files are made once under --work (kept between runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

import torch
torch.set_num_threads(int(sys.argv[3]))
import vsaccade
if sys.argv[1] == "untrained":  # an RGB model (memory and latency do not depend on the weights): the folder preset's
    # when measured (docs/benchmarks/files.md)
    model = vsaccade.create_model("saccader", image_channels=3, proxy_channels=3, proxy_size=256, location_cells=16,
                                  glimpses=4, glimpse_size=64, s_min=0.05, s_max=0.2, anchor_weight=0.0,
                                  proxy_encoder="strided", cell_score_width=32, glimpse_heads=True,
                                  heads=[{"name": "label", "num_classes": 9, "kind": "class"}]).eval()
else:
    model = vsaccade.load(sys.argv[1])
channels = model.config.image_channels if model.config.image_channels in (1, 3) else None
baseline = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
started = time.perf_counter()
image = vsaccade.FileImage(sys.argv[2], channels=channels)  # what vsaccade.predict opens a path as (with pyvips)
prediction = vsaccade.predict(model, image)
first = time.perf_counter() - started
peak = status("VmHWM")
times = []
for _ in range(int(sys.argv[4])):
    started = time.perf_counter()
    vsaccade.predict(model, vsaccade.FileImage(sys.argv[2], channels=channels))
    times.append(time.perf_counter() - started)
print(json.dumps({"baseline_rss": baseline, "peak_rss": peak, "first_seconds": first, "seconds": times,
                  "height": image.height, "width": image.width, "decodes_whole": getattr(image, "decodes_whole", None),
                  "proxy_source": getattr(image, "proxy_source", None)}))
"""


def make_tiff(path: Path, side: int) -> Path:
    """A tiled pyramidal JPEG-compressed RGB TIFF with smooth colour and clutter, made without holding it in memory."""
    import pyvips

    if path.exists():
        return path
    noise = pyvips.Image.gaussnoise(max(side // 64, 8), max(side // 64, 8), sigma=60, mean=128)
    colour = noise.bandjoin([noise.rot90(), noise.rot180()]).resize(side / noise.width, kernel="linear")
    detail = pyvips.Image.gaussnoise(side, side, sigma=30, mean=0)
    image = (colour + detail.bandjoin([detail, detail])).cast("uchar").copy(interpretation="srgb")
    tmp = path.with_suffix(".tmp.tif")
    image.tiffsave(str(tmp), tile=True, tile_width=256, tile_height=256, pyramid=True, compression="jpeg", Q=90,
                   bigtiff=side * side * 3 > 2**31)
    tmp.replace(path)
    return path


def make_jpeg(path: Path, width: int = 6000, height: int = 4000) -> Path:
    import pyvips

    if path.exists():
        return path
    noise = pyvips.Image.gaussnoise(width // 64, height // 64, sigma=60, mean=128)
    colour = noise.bandjoin([noise.flip("horizontal"), noise.flip("vertical")]).resize(64, kernel="linear")
    detail = pyvips.Image.gaussnoise(colour.width, colour.height, sigma=30, mean=0)
    (colour + detail.bandjoin([detail, detail])).cast("uchar").copy(interpretation="srgb").jpegsave(str(path), Q=90)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[2000, 20000])
    parser.add_argument("--no-jpeg", action="store_true", help="skip the 24-megapixel baseline JPEG row")
    parser.add_argument("--checkpoint", help="default: the folder preset's RGB model, untrained")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per file (medians reported)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="runs/files-bench")
    parser.add_argument("--json")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or "untrained"
    files = [(f"tiled pyramidal TIFF {s}x{s}", make_tiff(work / f"canvas-{s}.tif", s)) for s in args.sizes]
    if not args.no_jpeg:
        files.append(("baseline JPEG 6000x4000 (24 Mpx)", make_jpeg(work / "photo-24mpx.jpg")))
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "threads": args.threads,
              "load_average_1min_at_start": os.getloadavg()[0], "checkpoint": str(checkpoint), "rows": []}
    for label, path in files:
        runs = []
        for _ in range(args.processes):
            done = subprocess.run([sys.executable, "-c", CHILD, str(checkpoint), str(path), str(args.threads), str(args.repeats)],
                                  capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        growth = statistics.median((r["peak_rss"] - r["baseline_rss"]) / 2**20 for r in runs)
        latency = statistics.median(t for r in runs for t in r["seconds"]) * 1000
        first = statistics.median(r["first_seconds"] for r in runs) * 1000
        row = {"file": label, "path": str(path), "bytes": path.stat().st_size, "pixels": runs[0]["height"] * runs[0]["width"],
               "peak_rss_above_baseline_mb": growth, "baseline_rss_mb": statistics.median(r["baseline_rss"] for r in runs) / 2**20,
               "latency_ms_median": latency, "first_predict_ms": first, "decodes_whole": runs[0]["decodes_whole"],
               "proxy_source": runs[0]["proxy_source"], "processes": args.processes, "repeats": args.repeats}
        report["rows"].append(row)
        print(f"{label:36s} {row['bytes'] / 1e6:8.1f} MB file: peak RSS +{growth:6.1f} MB above {row['baseline_rss_mb']:.0f} MB, "
              f"latency {latency:7.1f} ms (first {first:.0f} ms), decodes whole: {row['decodes_whole']}", flush=True)
    tiffs = [r for r in report["rows"] if r["file"].startswith("tiled")]
    if len(tiffs) >= 2:
        ratio = tiffs[-1]["peak_rss_above_baseline_mb"] / max(tiffs[0]["peak_rss_above_baseline_mb"], 1e-9)
        report["rss_growth_ratio_largest_to_smallest_tiff"] = ratio
        print(f"peak-RSS growth, largest / smallest TIFF: {ratio:.2f}x")
    report["load_average_1min_at_end"] = os.getloadavg()[0]
    print(f"load average (1 min): {report['load_average_1min_at_start']:.2f} at start, {report['load_average_1min_at_end']:.2f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"results: {args.json}")


if __name__ == "__main__":
    main()
