"""Megapixel MNIST ablations: one row per change, same budget, same seeds (docs/benchmarks/megapixel.md).

Every row trains `vsaccade train --preset megapixel-core` plus its overrides for the same number of epochs,
on one torch thread, `--lanes` runs at a time, then reads validation/test results from each run directory.
Finished runs (results.json present) are skipped and killed ones resume, so the script can be stopped and
re-run. Run from the repo root, in the background:

    VSACCADE_DATA=/path/holding/mnist nohup python experiments/megapixel/megapixel_ablations.py > runs/ablations.log 2>&1 &
    python experiments/megapixel/megapixel_ablations.py --table     # the Markdown table of what has finished
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SPEED = ["model.proxy_encoder=strided", "model.cell_score_width=32"]
WINDOW64 = ["model.s_min=0.0427", "model.s_max=0.0427"]  # 64-px windows read at level 2 into W=32
CENTROID = ["model.centroid=true"]
GLIMPSE_LOSS = ["model.glimpse_heads=true", "objective.glimpse_loss_weight=1"]
GLIMPSE_REWARD = ["objective.glimpse_reward_weight=1"]
FULL = SPEED + WINDOW64 + CENTROID + GLIMPSE_LOSS + GLIMPSE_REWARD  # the megapixel preset, but for window inhibition

# name -> (what changes, overrides on top of --preset megapixel-core). The first six rows add one change each;
# the rest change one thing of the full model.
ROWS = {
    "core": ("the core model (megapixel-core preset)", []),
    "speed": ("+ strided proxy encoder, 32-wide cell scoring", SPEED),
    "window64": ("+ 64-px windows (whole cell + any digit in it), read at level 2", SPEED + WINDOW64),
    "centroid": ("+ offsets from the proxy's intensity centroid", SPEED + WINDOW64 + CENTROID),
    "glimpse-loss": ("+ per-glimpse heads, loss weight 1", SPEED + WINDOW64 + CENTROID + GLIMPSE_LOSS),
    "full": ("+ per-glimpse score-function reward, weight 1", FULL),
    "no-centroid": ("full, offsets from cell centres", SPEED + WINDOW64 + GLIMPSE_LOSS + GLIMPSE_REWARD),
    "reward-only": ("full, no per-glimpse loss", SPEED + WINDOW64 + CENTROID + ["model.glimpse_heads=true"] + GLIMPSE_REWARD),
    "no-anchor": ("full, proxy anchor weight 0", FULL + ["model.anchor_weight=0"]),
    "anchor4": ("full, proxy anchor weight 4", FULL + ["model.anchor_weight=4"]),
    "beta0": ("full, beta = 0 (no KL)", FULL + ["objective.beta=0"]),
    "ats": ("full, Attention Sampling estimator instead of the sequence-level score function", FULL + ["model.estimator=ats"]),
    "gaussian": ("Gaussian posterior (the paper's), 64-px windows, per-glimpse loss", SPEED + WINDOW64 + GLIMPSE_LOSS + ["model.locator=gaussian"]),
    "window-ior": ("full, + inhibition of return over whole windows (= megapixel preset since it was added)", FULL + ["model.inhibit=cell+window"]),
    "w64": ("full, W = 64 (the 64-px window read at full resolution; T*W^2 = 24,576)", FULL + ["model.glimpse_size=64"]),
    "no-glimpses": ("full, no-glimpse control (glimpse features zeroed, nothing read)", FULL + ["model.reader=none"]),
}


def run_dir(root: Path, name: str, seed: int) -> Path:
    return root / f"{name}-s{seed}"


def command(name: str, seed: int, out: Path, epochs: int) -> list[str]:
    overrides = [arg for item in ROWS[name][1] for arg in ("--set", item)]
    return ["vsaccade", "train", "--preset", "megapixel-core", "--seed", str(seed), "--epochs", str(epochs),
            "--out", str(out), "--resume", "--no-progress", "--set", "train.threads=1", "--set", "train.max_minutes=0",
            "--set", "train.lr_schedule=constant", *overrides]


def run_all(names, seeds, root: Path, epochs: int, lanes: int) -> None:
    pending = [(n, s) for s in seeds for n in names if not (run_dir(root, n, s) / "results.json").exists()]
    running: list[tuple[subprocess.Popen, str]] = []
    while pending or running:
        while pending and len(running) < lanes:
            name, seed = pending.pop(0)
            out = run_dir(root, name, seed)
            out.mkdir(parents=True, exist_ok=True)
            cmd = command(name, seed, out, epochs)
            print(time.strftime("%H:%M:%S"), "start", " ".join(cmd), flush=True)
            log = open(out / "train.log", "a")
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), out.name))
        time.sleep(5)
        for proc, label in list(running):
            if proc.poll() is not None:
                print(time.strftime("%H:%M:%S"), "done" if proc.returncode == 0 else f"FAILED ({proc.returncode})", label, flush=True)
                running.remove((proc, label))


def table(names, seeds, root: Path) -> str:
    lines = ["| row | change | seed | epochs | images | train min | img/s | val majority (best) | test majority | "
             "max | top | multi exact | hit | coverage | hit random | hit prior |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        for seed in seeds:
            path = run_dir(root, name, seed) / "results.json"
            if not path.exists():
                continue
            r = json.loads(path.read_text())
            heads, test = r["test"]["model"]["heads"], r["test"]
            metrics = [json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines()]
            best_val = max(m["validation"]["model"]["heads"]["majority"]["accuracy"] for m in metrics)
            speed = sum(m["train"]["images_per_second"] for m in metrics) / len(metrics)
            hit = lambda part: f"{100 * test[part]['hit_rate']:.1f}" if part in test else "-"
            lines.append(
                f"| {name} | {ROWS[name][0]} | {seed} | {r['epochs_completed']:g} | {r['images_seen']} | {r['train_minutes']:.1f} | "
                f"{speed:.0f} | {100 * best_val:.1f} | {100 * heads['majority']['accuracy']:.1f} | "
                f"{100 * heads['max']['accuracy']:.1f} | {100 * heads['top']['accuracy']:.1f} | "
                f"{100 * heads['multi']['exact_match']:.1f} | {hit('model')} | {100 * test['model']['coverage']:.1f} | "
                f"{hit('random_glimpses')} | {hit('prior_glimpses')} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lanes", type=int, default=2, help="runs at a time, one torch thread each")
    parser.add_argument("--root", default="runs/megapixel-ablations")
    parser.add_argument("--table", action="store_true", help="only print the table of finished runs")
    args = parser.parse_args()
    root = Path(args.root)
    if not args.table:
        os.environ.setdefault("VSACCADE_OFFLINE", "1")
        run_all(args.rows, args.seeds, root, args.epochs, args.lanes)
    text = table(args.rows, args.seeds, root)
    print(text)
    (root / "table.md").parent.mkdir(parents=True, exist_ok=True)
    (root / "table.md").write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
