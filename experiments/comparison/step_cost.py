"""What one training epoch of a preset costs on this machine, before committing hours to it: times a few optimiser
steps (forward, backward, Adam) on real training samples and extrapolates to the preset's epoch and budget.

    python experiments/comparison/step_cost.py --preset cluttered-pair --set model.architecture=fullres --batch 8 --steps 4

Prints the median seconds per image (the first step is warm-up and not counted) and the hours one epoch and the
preset's epochs would take at this thread count; `--json` keeps them.
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch

from vsaccade import Objective, collate, create_model, make_task, model_config_for, resolve

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--preset", required=True)
parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
parser.add_argument("--batch", type=int, default=8)
parser.add_argument("--steps", type=int, default=4, help="timed steps after one warm-up step")
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--json")
args = parser.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
model_config, objective_config, train_config = resolve(args.preset, args.set)
task = make_task(train_config.task, "train", **train_config.task_options)
config = model_config_for(task, model_config)
model = create_model(**config.to_dict())
optimiser = torch.optim.Adam(model.parameters(), train_config.lr)
objective = Objective(objective_config, config.estimator)
load = os.getloadavg()[0]
seconds = []
for step in range(args.steps + 1):
    batch = collate([task[(step * args.batch + i) % len(task)] for i in range(args.batch)])
    started = time.perf_counter()
    output = model(batch.images, batch.proxy, batch.proxy_mask)
    loss = objective(output, batch.labels, config.heads, objective_config.beta)["loss"]
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    seconds.append(time.perf_counter() - started)
    print(f"step {step}: {seconds[-1]:.2f} s{' (warm-up)' if step == 0 else ''}", flush=True)
per_image = statistics.median(seconds[1:]) / args.batch
image = task[0].image
result = {
    "preset": args.preset, "overrides": args.set, "architecture": config.architecture,
    "image": [image.height, image.width], "train_size": len(task), "epochs": train_config.epochs,
    "batch": args.batch, "steps": args.steps, "threads": args.threads, "load_average_at_start": load,
    "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    "seconds_per_image": per_image, "hours_per_epoch": per_image * len(task) / 3600,
    "hours_for_preset_epochs": per_image * len(task) * train_config.epochs / 3600,
}
print(f"{config.architecture} on {image.height}x{image.width}: {per_image:.3f} s per training image at {args.threads} "
      f"thread(s) (load {load:.2f}); one epoch of {len(task)} images {result['hours_per_epoch']:.1f} h, "
      f"the preset's {train_config.epochs} epochs {result['hours_for_preset_epochs']:.1f} h")
if args.json:
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
