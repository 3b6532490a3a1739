"""Gather floor.sh's bench and golden files into one summary JSON (docs/results/inference-floor.json's schema).

Usage: python experiments/files/floor_summary.py WORKDIR --before COMMIT --after COMMIT --out OUT.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SIZES = (1500, 6000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    work = Path(args.workdir)
    measurements, golden, machine = {}, {}, None
    for size in SIZES:
        for who, commit in (("before", args.before), ("after", args.after)):
            report = json.loads((work / f"bench-{who}-{size}" / "bench-files.json").read_text())
            machine = report["machine"]
            row = {"batch-1 latency, median [ms]": round(report["latency_ms"]["median"], 2),
                   "IQR [ms]": round(report["latency_ms"]["iqr"], 2),
                   "cold first call [ms]": round(report["cold_ms"], 2),
                   "calls": report["latency_ms"]["repeats"]}
            row.update({f"stage {stage} [ms]": round(ms, 2) for stage, ms in sorted(report["stages_ms"].items())})
            measurements[f"{size}x{size}, {who} ({commit})"] = row
        before = measurements[f"{size}x{size}, before ({args.before})"]["batch-1 latency, median [ms]"]
        after = measurements[f"{size}x{size}, after ({args.after})"]["batch-1 latency, median [ms]"]
        measurements[f"{size}x{size}, before / after"] = {"speed-up [x]": round(before / after, 2)}
        golden[str(size)] = json.loads((work / f"golden-{size}.json").read_text())
    summary = {
        "name": "The inference floor: batch-1 latency from files before and after, per stage, and the golden check",
        "task": "Megapixel MNIST test scenes as tiled pyramidal TIFFs (vsaccade generate megapixel): 200 of 1500x1500, "
                "120 of 6000x6000",
        "preset": "megapixel (bundled checkpoint)", "seeds": [], "metrics": {}, "controls": {}, "supervision": "labels",
        "minutes": None, "images_seen": None, "pixels_read": None, "commit": args.after,
        "command": f"git worktree add /tmp/before {args.before}; bash experiments/files/floor.sh WORKDIR",
        "note": "vsaccade bench --checkpoint megapixel --files DIR --threads 1: one new file per call, libvips' operation "
                "cache off, nothing kept per path, the first call apart; every fourth file measured through the "
                "instrument for the stages (bench_files.py). Before and after measured back to back in one run on an "
                "idle machine.",
        "machine": machine,
        "golden": golden,
        "measurements": measurements,
    }
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(measurements, indent=2))


if __name__ == "__main__":
    main()
