"""Accuracy side by side (docs/benchmarks/comparison.md): every model on the same task, split and budget.

For each task (`pair`: Two-Digit Cluttered MNIST, the `cluttered-pair` preset; `megapixel-500`: 500x500 canvas,
5 digits, 6 noise patches, proxy scale 0.2, the `megapixel-500` preset) and each row below, one
`vsaccade train --preset <task preset>` with the row's overrides, under one budget (`--epochs` and
`--max-minutes`, the same for every row of a task), evaluated once on the test split (never used for selection:
the best validation epoch is the checkpoint). One run directory per (row, task, seed); finished runs
(results.json) are skipped, killed ones resume, so the script can be stopped and re-run:

    VSACCADE_DATA=/path/holding/mnist nohup python experiments/comparison/compare_accuracy.py > runs/compare.log 2>&1 &
    python experiments/comparison/compare_accuracy.py --table        # table.md and curves.png of what has finished

A row whose best validation accuracy (first head) stays below 1.5x chance is reported as "did not train in
budget", and no claim is made against it. Run it on an otherwise idle machine: the minutes are part of the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TASKS = {"pair": "cluttered-pair", "megapixel-500": "megapixel-500"}
# Baselines have no per-glimpse heads: the presets' per-glimpse loss and reward are switched off for them.
NO_GLIMPSE_TERMS = ["objective.glimpse_loss_weight=0", "objective.glimpse_reward_weight=0"]
# Each model's own documented settings where it has them. ATS: its Megapixel MNIST setting (attention over
# the low-resolution view, patches read unresampled, entropy regulariser 1e-4, Adam 1e-3), with patches of 32 px
# here so that it samples more pixels than ours (10 x 32^2 = 10,240 vs 6 x 32^2 = 6,144 on Megapixel-500).
ATS = {"pair": NO_GLIMPSE_TERMS + ["model.architecture=ats", "model.glimpses=4", "model.glimpse_size=32", "model.location_cells=16",
                "objective.attention_entropy_weight=0.0001"],
       "megapixel-500": NO_GLIMPSE_TERMS + ["model.architecture=ats", "model.glimpses=10", "model.glimpse_size=32", "model.s_min=0.064",
                         "model.s_max=0.064", "model.location_cells=50", "model.proxy_width=8",
                         "objective.attention_entropy_weight=0.0001"]}
ROWS = {
    "ours": ("Variational Saccading (the task's preset)", {}),
    "fullres": ("CNN over every full-resolution pixel", {"*": NO_GLIMPSE_TERMS + ["model.architecture=fullres"]}),
    "proxy": ("the same kind of CNN on the proxy alone", {"*": NO_GLIMPSE_TERMS + ["model.architecture=proxy"]}),
    "ats": ("Attention Sampling (faithful re-implementation)", ATS),
    "grid": ("ours, glimpses at fixed grid places", {"*": ["model.policy=grid"]}),
    "random": ("ours, uniformly random glimpses", {"*": ["model.policy=random"]}),
    "prior": ("ours, glimpses from the prior alone", {"*": ["model.policy=prior"]}),
    "beta0": ("ours, beta = 0, sampled locations", {"*": ["objective.beta=0"]}),
    "deterministic": ("ours, deterministic locations (posterior mode), no KL", {"*": ["model.policy=mode", "objective.beta=0"]}),
    "no-glimpses": ("ours, no-glimpse control (nothing read)", {"*": ["model.reader=none"]}),
}


def overrides(row: str, task: str) -> list[str]:
    table = ROWS[row][1]
    return table.get(task, table.get("*", []))


def run_dir(root: Path, row: str, task: str, seed: int) -> Path:
    return root / task / f"{row}-s{seed}"


def command(row: str, task: str, seed: int, out: Path, epochs: int, minutes: float, threads: int) -> list[str]:
    sets = [arg for item in overrides(row, task) for arg in ("--set", item)]
    return ["vsaccade", "train", "--preset", TASKS[task], "--seed", str(seed), "--epochs", str(epochs),
            "--max-minutes", str(minutes), "--out", str(out), "--resume", "--no-progress",
            "--set", f"train.threads={threads}", *sets]


def run_all(rows, tasks, seeds, root: Path, epochs: int, minutes: float, lanes: int, threads: int) -> None:
    pending = [(r, t, s) for t in tasks for s in seeds for r in rows if not (run_dir(root, r, t, s) / "results.json").exists()]
    running: list[tuple[subprocess.Popen, str]] = []
    while pending or running:
        while pending and len(running) < lanes:
            row, task, seed = pending.pop(0)
            out = run_dir(root, row, task, seed)
            out.mkdir(parents=True, exist_ok=True)
            cmd = command(row, task, seed, out, epochs, minutes, threads)
            print(time.strftime("%H:%M:%S"), "start", " ".join(cmd), flush=True)
            log = open(out / "train.log", "a")
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), f"{task}/{out.name}"))
        time.sleep(5)
        for proc, label in list(running):
            if proc.poll() is not None:
                print(time.strftime("%H:%M:%S"), "done" if proc.returncode == 0 else f"FAILED ({proc.returncode})", label, flush=True)
                running.remove((proc, label))


def load(path: Path):
    results = json.loads((path / "results.json").read_text())
    metrics = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return results, metrics


def table(rows, tasks, seeds, root: Path) -> str:
    lines = []
    for task in tasks:
        lines += [f"\n### {task}\n", "| row | model | seed | test accuracy per head | hit | hit random | hit prior | "
                  "train min | images | pixels read per image | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            for seed in seeds:
                path = run_dir(root, row, task, seed)
                if not (path / "results.json").exists():
                    continue
                r, metrics = load(path)
                test, heads = r["test"], r["test"]["model"]["heads"]
                first = next(iter(heads))
                chance = 1 / r["model_config"]["heads"][0]["num_classes"]
                best = max(m["validation"]["model"]["heads"][first].get("accuracy", 0) for m in metrics)
                note = "did not train in budget" if best < 1.5 * chance else ""
                accs = ", ".join(f"{h} {100 * v.get('accuracy', v.get('exact_match', 0)):.1f}" for h, v in heads.items())
                hit = lambda part: f"{100 * test[part]['hit_rate']:.1f}" if part in test and test.get("glimpses") and test.get("reader", "glimpses") != "none" else "-"
                lines.append(f"| {row} | {ROWS[row][0]} | {seed} | {accs} | {hit('model')} | {hit('random_glimpses')} | "
                             f"{hit('prior_glimpses')} | {r['train_minutes']:.1f} | {r['images_seen']} | "
                             f"{test.get('pixels_read')} | {note} |")
    return "\n".join(lines)


def curves(rows, tasks, seeds, root: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for row in rows:
            for seed in seeds:
                path = run_dir(root, row, task, seed)
                if not (path / "metrics.jsonl").exists():
                    continue
                metrics = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
                first = next(iter(metrics[0]["validation"]["model"]["heads"]))
                ax.plot([m["minutes"] for m in metrics],
                        [100 * m["validation"]["model"]["heads"][first].get("accuracy", 0) for m in metrics],
                        marker=".", label=f"{row} (s{seed})")
        ax.set(title=f"{task}: validation accuracy ({'first head'})", xlabel="training minutes", ylabel="%")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=40, help="epoch cap, the same for every row")
    parser.add_argument("--max-minutes", type=float, default=30.0, help="wall-time cap per run, the same for every row")
    parser.add_argument("--lanes", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--root", default="runs/compare")
    parser.add_argument("--table", action="store_true", help="only write the table and curves of finished runs")
    args = parser.parse_args()
    root = Path(args.root)
    if not args.table:
        os.environ.setdefault("VSACCADE_OFFLINE", "1")
        run_all(args.rows, args.tasks, args.seeds, root, args.epochs, args.max_minutes, args.lanes, args.threads)
    text = table(args.rows, args.tasks, args.seeds, root)
    print(text)
    root.mkdir(parents=True, exist_ok=True)
    (root / "table.md").write_text(text + "\n")
    curves(args.rows, args.tasks, args.seeds, root, root / "curves.png")
    print(f"{root / 'table.md'}, {root / 'curves.png'}")


if __name__ == "__main__":
    sys.exit(main())
