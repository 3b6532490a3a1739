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

The accuracy-vs-cost frontier (issue 21) on Megapixel-500 and Megapixel MNIST 1500:

    python experiments/comparison/compare_accuracy.py --estimate --tasks megapixel-500 megapixel \
        --rows ours fullres resnet18 resnet18-224 proxy ats ips --epochs 40 --max-minutes 120 --root runs/frontier
    python experiments/comparison/compare_accuracy.py --tasks megapixel-500 megapixel \
        --rows ours fullres resnet18 resnet18-224 proxy ats ips --lrs 0.0003 0.001 0.003 --epochs 40 \
        --max-minutes 120 --root runs/frontier
    python experiments/comparison/compare_accuracy.py --table --tasks megapixel-500 megapixel --rows ... --lrs ... \
        --root runs/frontier --frontier megapixel-500=MP500/test megapixel=MP1500/test

`--estimate` times a few training steps per row (step_cost.py) and says how many epochs the budget buys (a row
that cannot finish one is out of reach, with its estimate); `--lrs` trains every baseline at each learning rate and
reports the one that reads validation best; `--frontier` benches each selected checkpoint over a folder of that
task's files (`vsaccade generate megapixel [--size 500]`) and plots test accuracy against batch-1 latency.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TASKS = {"pair": "cluttered-pair", "megapixel-500": "megapixel-500", "megapixel": "megapixel"}
# Baselines have no per-glimpse heads: the presets' per-glimpse loss and reward are switched off for them.
NO_GLIMPSE_TERMS = ["objective.glimpse_loss_weight=0", "objective.glimpse_reward_weight=0"]
# Each model's own documented settings where it has them. ATS: its Megapixel MNIST setting (attention over
# the low-resolution view, patches read unresampled, entropy regulariser 1e-4, Adam 1e-3), with patches of 32 px
# here so that it samples more pixels than ours (10 x 32^2 = 10,240 vs 6 x 32^2 = 6,144 on Megapixel-500).
ATS = {"pair": NO_GLIMPSE_TERMS + ["model.architecture=ats", "model.glimpses=4", "model.glimpse_size=32", "model.location_cells=16",
                "objective.attention_entropy_weight=0.0001"],
       "megapixel-500": NO_GLIMPSE_TERMS + ["model.architecture=ats", "model.glimpses=10", "model.glimpse_size=32", "model.s_min=0.064",
                         "model.s_max=0.064", "model.location_cells=50", "model.proxy_width=8",
                         "objective.attention_entropy_weight=0.0001"],
       # its Megapixel MNIST setting at full size: 10 patches of 50x50 read unresampled (as `vsaccade bench` times it)
       "megapixel": NO_GLIMPSE_TERMS + ["model.architecture=ats", "model.glimpses=10", "model.glimpse_size=50",
                                        "model.s_min=0.0333", "model.s_max=0.0333", "model.location_cells=45",
                                        "model.proxy_width=8", "objective.attention_entropy_weight=0.0001"]}
ROWS = {
    "ours": ("Variational Saccading (the task's preset)", {}),
    "fullres": ("CNN over every full-resolution pixel", {"*": NO_GLIMPSE_TERMS + ["model.architecture=fullres"]}),
    "proxy": ("the same kind of CNN on the proxy alone", {"*": NO_GLIMPSE_TERMS + ["model.architecture=proxy"]}),
    "ats": ("Attention Sampling (faithful re-implementation)", ATS),
    # IPS takes the preset's windows (glimpses, glimpse_size, s): ours' M, patches and read resolution
    "ips": ("Iterative Patch Selection, our windows as patches", {"*": NO_GLIMPSE_TERMS + ["model.architecture=ips"]}),
    "resnet18": ("ResNet-18-shaped CNN (width 16) over every pixel", {"*": NO_GLIMPSE_TERMS + ["model.architecture=resnet18"]}),
    "resnet18-224": ("the same ResNet-18 over the image resized to 224",
                     {"*": NO_GLIMPSE_TERMS + ["model.architecture=resnet18-224"]}),
    "grid": ("ours, glimpses at fixed grid places", {"*": ["model.policy=grid"]}),
    "random": ("ours, uniformly random glimpses", {"*": ["model.policy=random"]}),
    "prior": ("ours, glimpses from the prior alone", {"*": ["model.policy=prior"]}),
    "beta0": ("ours, beta = 0, sampled locations", {"*": ["objective.beta=0"]}),
    "deterministic": ("ours, deterministic locations (posterior mode), no KL", {"*": ["model.policy=mode", "objective.beta=0"]}),
    "no-glimpses": ("ours, no-glimpse control (nothing read)", {"*": ["model.reader=none"]}),
}


BASELINES = {"fullres", "proxy", "ats", "ips", "resnet18", "resnet18-224"}  # rows whose learning rate is swept (--lrs)


def overrides(row: str, task: str) -> list[str]:
    table = ROWS[row][1]
    return table.get(task, table.get("*", []))


def row_lrs(row: str, lrs) -> list:
    """The learning rates a row is trained at: each of `lrs` for a baseline, else the preset's own (None)."""
    return list(lrs) if lrs and row in BASELINES else [None]


def run_dir(root: Path, row: str, task: str, seed: int, lr=None) -> Path:
    return root / task / (f"{row}-s{seed}" if lr is None else f"{row}-lr{lr:g}-s{seed}")


def command(row: str, task: str, seed: int, out: Path, epochs: int, minutes: float, threads: int, lr=None) -> list[str]:
    sets = [arg for item in overrides(row, task) + ([f"train.lr={lr:g}"] if lr is not None else [])
            for arg in ("--set", item)]
    return ["vsaccade", "train", "--preset", TASKS[task], "--seed", str(seed), "--epochs", str(epochs),
            "--max-minutes", str(minutes), "--out", str(out), "--resume", "--no-progress",
            "--set", f"train.threads={threads}", *sets]


def runs(rows, tasks, seeds, lrs) -> list[tuple]:
    return [(r, t, s, lr) for t in tasks for s in seeds for r in rows for lr in row_lrs(r, lrs)]


def run_all(rows, tasks, seeds, root: Path, epochs: int, minutes: float, lanes: int, threads: int, lrs=()) -> None:
    pending = [spec for spec in runs(rows, tasks, seeds, lrs) if not (run_dir(root, *spec) / "results.json").exists()]
    running: list[tuple[subprocess.Popen, str]] = []
    while pending or running:
        while pending and len(running) < lanes:
            row, task, seed, lr = pending.pop(0)
            out = run_dir(root, row, task, seed, lr)
            out.mkdir(parents=True, exist_ok=True)
            cmd = command(row, task, seed, out, epochs, minutes, threads, lr)
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


def best_validation(metrics) -> float:
    first = next(iter(metrics[0]["validation"]["model"]["heads"]))
    return max(m["validation"]["model"]["heads"][first].get("accuracy", 0) for m in metrics)


def finished(rows, tasks, seeds, lrs, root: Path) -> dict:
    """{(row, task, seed, lr): (results, metrics)} of the runs that have finished."""
    return {spec: load(run_dir(root, *spec)) for spec in runs(rows, tasks, seeds, lrs)
            if (run_dir(root, *spec) / "results.json").exists()}


def selected(done: dict) -> dict:
    """{(row, task, seed): lr}: for each row, the learning rate whose run reads validation best (never test)."""
    best = {}
    for (row, task, seed, lr), (_, metrics) in done.items():
        key = (row, task, seed)
        if key not in best or best_validation(metrics) > best[key][1]:
            best[key] = (lr, best_validation(metrics))
    return {key: lr for key, (lr, _) in best.items()}


def table(rows, tasks, seeds, root: Path, lrs=()) -> str:
    done = finished(rows, tasks, seeds, lrs, root)
    selected_lr = selected(done)
    lines = []
    for task in tasks:
        lines += [f"\n### {task}\n", "| row | model | seed | lr | test accuracy per head | hit | hit random | hit prior | "
                  "train min | epochs | images | pixels read per image | note |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for (row, run_task, seed, lr), (r, metrics) in done.items():
            if run_task != task:
                continue
            test, heads = r["test"], r["test"]["model"]["heads"]
            chance = 1 / r["model_config"]["heads"][0]["num_classes"]
            notes = ["did not train in budget"] if best_validation(metrics) < 1.5 * chance else []
            if lr is not None and selected_lr[(row, task, seed)] == lr:
                notes.append("selected on validation")
            accs = ", ".join(f"{h} {100 * v.get('accuracy', v.get('exact_match', 0)):.1f}" for h, v in heads.items())
            hit = lambda part: f"{100 * test[part]['hit_rate']:.1f}" if part in test and test.get("glimpses") and test.get("reader", "glimpses") != "none" else "-"
            lines.append(f"| {row} | {ROWS[row][0]} | {seed} | {'preset' if lr is None else f'{lr:g}'} | {accs} | "
                         f"{hit('model')} | {hit('random_glimpses')} | {hit('prior_glimpses')} | {r['train_minutes']:.1f} | "
                         f"{len(metrics)} | {r['images_seen']} | {test.get('pixels_read')} | {'; '.join(notes)} |")
    return "\n".join(lines)


def curves(rows, tasks, seeds, root: Path, out: Path, lrs=()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for row, run_task, seed, lr in runs(rows, tasks, seeds, lrs):
            path = run_dir(root, row, run_task, seed, lr)
            if run_task != task or not (path / "metrics.jsonl").exists():
                continue
            metrics = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
            if not metrics:
                continue
            first = next(iter(metrics[0]["validation"]["model"]["heads"]))
            ax.plot([m["minutes"] for m in metrics],
                    [100 * m["validation"]["model"]["heads"][first].get("accuracy", 0) for m in metrics],
                    marker=".", label=f"{row}{'' if lr is None else f' lr {lr:g}'} (s{seed})")
        ax.set(title=f"{task}: validation accuracy (first head)", xlabel="training minutes", ylabel="%")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def estimate(rows, tasks, root: Path, epochs: int, minutes: float, threads: int) -> dict:
    """Seconds per training image of each (row, task) on this machine (step_cost.py: 3 timed optimiser steps of 8
    images after a warm-up) and what the budget then buys: the epochs `minutes` allow, capped at `epochs`."""
    estimates = {}
    for task in tasks:
        for row in rows:
            out = root / task / f"{row}-step-cost.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            sets = [arg for item in overrides(row, task) for arg in ("--set", item)]
            subprocess.run([sys.executable, str(Path(__file__).with_name("step_cost.py")), "--preset", TASKS[task],
                            "--batch", "8", "--steps", "3", "--threads", str(threads), "--json", str(out), *sets],
                           check=True, stdout=subprocess.DEVNULL)
            cost = json.loads(out.read_text())
            epoch_hours = cost["hours_per_epoch"]
            reachable = min(epochs, minutes / 60 / epoch_hours) if minutes else epochs
            estimates[f"{task} / {row}"] = {
                "seconds per training image": round(cost["seconds_per_image"], 4),
                "hours per epoch": round(epoch_hours, 3), f"hours for {epochs} epochs": round(epochs * epoch_hours, 2),
                "epochs within the budget": round(reachable, 1),
                "note": "out of reach: fewer than 1 epoch in the budget" if reachable < 1 else ""}
            print(f"{task} / {row}: {cost['seconds_per_image']:.3f} s per image, {epoch_hours:.2f} h per epoch, "
                  f"{reachable:.1f} epochs within the budget", flush=True)
    return estimates


def frontier(rows, tasks, seeds, lrs, root: Path, files: dict, out: Path) -> dict:
    """Test accuracy (first head, the learning rate selected on validation) against batch-1 latency from files
    (`vsaccade bench --checkpoint best.pt --files DIR`, 1 thread) for each finished row: a table and one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = finished(rows, tasks, seeds, lrs, root)
    points = {}
    for (row, task, seed), lr in selected(done).items():
        if task not in files:
            continue
        path = run_dir(root, row, task, seed, lr)
        results, _ = done[(row, task, seed, lr)]
        bench = path / "bench-files"
        if not (bench / "bench-files.json").exists():
            subprocess.run(["vsaccade", "bench", "--checkpoint", str(path / "best.pt"), "--files", files[task],
                            "--threads", "1", "--files-limit", "200", "--no-progress", "--out", str(bench)],
                           check=True, stdout=subprocess.DEVNULL)
        report = json.loads((bench / "bench-files.json").read_text())
        heads = results["test"]["model"]["heads"]
        first = next(iter(heads))
        points[f"{task} / {row} / s{seed}"] = {"test accuracy [%]": heads[first].get("accuracy"),
                                              "batch-1 latency from files, median [ms]": round(report["latency_ms"]["median"], 2),
                                              "learning rate": lr}
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name, point in points.items():
            if name.startswith(task + " / "):
                ax.scatter(point["batch-1 latency from files, median [ms]"], 100 * point["test accuracy [%]"])
                ax.annotate(name.split(" / ")[1], (point["batch-1 latency from files, median [ms]"],
                                                   100 * point["test accuracy [%]"]), fontsize=8)
        ax.set(xscale="log", title=f"{task}: test accuracy vs batch-1 latency (files, 1 thread)",
               xlabel="ms per image (log)", ylabel="test accuracy, first head (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return points


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--lrs", nargs="*", type=float, default=[],
                        help="learning rates each baseline is trained at (the best on validation is reported)")
    parser.add_argument("--epochs", type=int, default=40, help="epoch cap, the same for every row")
    parser.add_argument("--max-minutes", type=float, default=30.0, help="wall-time cap per run, the same for every row")
    parser.add_argument("--lanes", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--root", default="runs/compare")
    parser.add_argument("--table", action="store_true", help="only write the table and curves of finished runs")
    parser.add_argument("--estimate", action="store_true",
                        help="only time a few training steps per row and task and say what the budget buys")
    parser.add_argument("--frontier", nargs="*", default=[], metavar="TASK=DIR",
                        help="with --table: bench each selected run over a folder of that task's image files and plot "
                             "test accuracy against batch-1 latency")
    args = parser.parse_args()
    root = Path(args.root)
    os.environ.setdefault("VSACCADE_OFFLINE", "1")
    if args.estimate:
        estimates = estimate(args.rows, args.tasks, root, args.epochs, args.max_minutes, args.threads)
        root.mkdir(parents=True, exist_ok=True)
        (root / "estimates.json").write_text(json.dumps(estimates, indent=2) + "\n")
        print(root / "estimates.json")
        return
    if not args.table:
        run_all(args.rows, args.tasks, args.seeds, root, args.epochs, args.max_minutes, args.lanes, args.threads, args.lrs)
    text = table(args.rows, args.tasks, args.seeds, root, args.lrs)
    print(text)
    root.mkdir(parents=True, exist_ok=True)
    (root / "table.md").write_text(text + "\n")
    curves(args.rows, args.tasks, args.seeds, root, root / "curves.png", args.lrs)
    print(f"{root / 'table.md'}, {root / 'curves.png'}")
    if args.frontier:
        files = dict(item.split("=", 1) for item in args.frontier)
        points = frontier(args.rows, args.tasks, args.seeds, args.lrs, root, files, root / "frontier.png")
        (root / "frontier.json").write_text(json.dumps(points, indent=2) + "\n")
        print(json.dumps(points, indent=2))
        print(root / "frontier.png")


if __name__ == "__main__":
    sys.exit(main())
