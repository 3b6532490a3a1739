"""Where counting fails: the reader or the readout? (docs/benchmarks/counting.md, "Diagnosis").

Takes the location policy out of the question. For each scene the glimpses are fixed in advance and cached:
  * "oracle": one window of the preset's side (`model.s_max`) centred on every unit (targets and distractors, at
    most 2K), as a perfect mini-map reader would place them;
  * "prior": the T windows the preset's model draws from its prior alone (the mini-map anchor with window
    inhibition, untrained weights: what our model starts from).
`--set` changes the preset (window side, cells, T), e.g. the first runs' 92-px windows over 16x16 cells:
`--set model.s_min=0.12 --set model.s_max=0.12 --set model.location_cells=16` (docs/benchmarks/counting.md).
Then, on the cached glimpses, the preset's glimpse encoder is trained with one of these readouts:
  * "unit" (oracle glimpses only, uses the scene description): is the unit at the window's centre a target?
    (can the encoder see the mark at all);
  * "mean": an MLP over the mean glimpse feature -> K + 1 count logits (the model's mean readout, without h_T);
  * "sum": `model.readout=count`'s CountReadout, a count per glimpse, summed: k ~ a discretised Gaussian centred
    on sum_t softplus(a . f_t).
The encoder and the count readout are the preset's own parts (a model built from it, `model.readout=count`), their
weights drawn afresh in construction order, as building them alone would. Both count readouts learn from the
scene's count alone. Train on the training split, report on validation (the
test split stays unseen).

    python experiments/counting/counting_oracle.py --glimpses oracle --readout unit --json runs/oracle-unit.json
"""

import argparse
import json
import os
import time

import torch
from tqdm import tqdm

from vsaccade import collate, create_model, make_task, model_config_for, resolve, sample_glimpses

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--preset", default="counting-768")
parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="preset overrides (window size, cells, T) for the prior windows")
parser.add_argument("--stats-only", action="store_true",
                    help="only build the glimpses and report what a perfect per-window counter would score")
parser.add_argument("--glimpses", choices=("oracle", "prior"), default="oracle")
parser.add_argument("--readout", choices=("unit", "mean", "sum"), default="sum")
parser.add_argument("--train-size", type=int, default=4000)
parser.add_argument("--validation-size", type=int, default=500)
parser.add_argument("--epochs", type=int, default=15)
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--cache", default="runs/counting-oracle-cache")
parser.add_argument("--json")
args = parser.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
model_config, _, train_config = resolve(args.preset, args.set)
if args.readout == "unit" and args.glimpses != "oracle":
    parser.error("--readout unit needs --glimpses oracle (the unit at each window's centre)")


def command_line() -> str:
    parts = []
    for key, value in vars(args).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [f"{flag} {item}" for item in value]
        elif value is not None and value is not False:
            parts.append(f"{flag} {value}")
    return "python experiments/counting/counting_oracle.py " + " ".join(parts)


def window_contents(task, index, z):
    """Per window (T, 3) z: how many targets have their centre inside the window."""
    scene, size = task.scene(index), task.scene_size
    centres = torch.as_tensor(scene.centres, dtype=torch.float32) / size * 2 - 1  # (N, 2) as (u, v)
    half = z[:, :1]  # the window's half side in (u, v) units: s * size / size
    inside = ((centres[None] - z[:, None, 1:]).abs() < half[:, None]).all(-1)  # (T, N)
    return (inside & torch.as_tensor(scene.is_target)[None]).sum(1)


def build(split, size):
    """Cached (glimpses uint8 (S, T, 3, W, W), mask (S, T), unit_is_target (S, T), window_targets (S, T), count (S,))."""
    tag = "".join(f"-{item}" for item in args.set)
    path = os.path.join(args.cache, f"{args.preset}{tag}-{args.glimpses}-{split}-{size}.pt")
    if os.path.exists(path):
        return torch.load(path)
    task = make_task("counting", split, size=size, **train_config.task_options)
    K, s = task.max_targets, model_config.s_max
    T = 2 * K if args.glimpses == "oracle" else model_config.glimpses
    W = model_config.glimpse_size
    glimpses = torch.zeros(size, T, 3, W, W, dtype=torch.uint8)
    mask, unit_target = torch.zeros(size, T, dtype=torch.bool), torch.zeros(size, T, dtype=torch.long)
    window_targets, counts = torch.zeros(size, T, dtype=torch.long), torch.zeros(size, dtype=torch.long)
    prior_model = create_model(**model_config_for(task, model_config).to_dict()).eval() if args.glimpses == "prior" else None
    for i in tqdm(range(size), desc=f"{args.glimpses} glimpses, {split}"):
        sample = task[i]
        scene = task.scene(i)
        counts[i] = scene.count
        if prior_model is None:
            n = min(len(scene.centres), T)
            uv = torch.as_tensor(scene.centres[:n], dtype=torch.float32) / task.scene_size * 2 - 1
            z = torch.cat([uv.new_full((n, 1), s), uv], 1)
            g = sample_glimpses([sample.image] * n, z, W) if n else torch.zeros(0, 3, W, W)
            unit_target[i, :n] = torch.as_tensor(scene.is_target[:n])
        else:
            batch = collate([sample])
            with torch.no_grad(), torch.random.fork_rng():  # scene i's draws: torch's generator seeded with i
                torch.manual_seed(i)
                out = prior_model(batch.images, batch.proxy, batch.proxy_mask, source="prior")
            z, g, n = out.z[0], out.glimpses[0], T
        glimpses[i, :n] = (g.clamp(0, 1) * 255).round().to(torch.uint8)
        mask[i, :n] = True
        if n:
            window_targets[i, :n] = window_contents(task, i, z)
    data = (glimpses, mask, unit_target, window_targets, counts)
    os.makedirs(args.cache, exist_ok=True)
    torch.save(data, path + ".tmp")
    os.replace(path + ".tmp", path)
    return data


def fresh(module: torch.nn.Module) -> torch.nn.Module:
    """module's weights drawn anew from torch's generator, in construction order (as building it alone would)."""
    for part in module.modules():
        if hasattr(part, "reset_parameters"):
            part.reset_parameters()
    return module


class Reader(torch.nn.Module):
    def __init__(self, K):
        super().__init__()
        c = model_config
        task = make_task("counting", "validation", size=1, **train_config.task_options)
        with torch.random.fork_rng():  # the preset's parts (encoder, count readout); torch's generator left as it was
            parts = create_model(**model_config_for(task, c.replace(readout="count")).to_dict())
        self.encoder = fresh(parts.reader.encoder)
        if args.readout == "unit":
            self.head = torch.nn.Linear(c.hidden, 2)
        elif args.readout == "mean":
            self.head = torch.nn.Sequential(torch.nn.Linear(c.hidden, c.hidden), torch.nn.ReLU(), torch.nn.Linear(c.hidden, K + 1))
        else:
            self.head = fresh(parts.classifier.counts[task.heads[0].name])

    def forward(self, glimpses, mask):
        S, T = mask.shape
        f = glimpses.new_zeros(S, T, model_config.hidden, dtype=torch.float32)
        f[mask] = self.encoder(glimpses[mask].float() / 255)  # padding windows are never encoded
        if args.readout == "unit":
            return self.head(f)  # (S, T, 2)
        if args.readout == "mean":
            return self.head((f * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1))
        return self.head(f, mask)


def scores(model, data, batch=64):
    glimpses, mask, unit_target, window_targets, counts = data
    correct = total = abs_error = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(counts), batch):
            sl = slice(start, start + batch)
            out = model(glimpses[sl], mask[sl])
            if args.readout == "unit":
                m = mask[sl]
                correct += (out.argmax(-1)[m] == unit_target[sl][m]).sum().item()
                total += m.sum().item()
            else:
                pred = out.argmax(-1)
                correct += (pred == counts[sl]).sum().item()
                abs_error += (pred - counts[sl]).abs().sum().item()
                total += len(pred)
    model.train()
    return {"accuracy": correct / total, **({} if args.readout == "unit" else {"mae": abs_error / total})}


train = build("train", args.train_size)
validation = build("validation", args.validation_size)
if args.stats_only:
    _, mask, _, window_targets, counts = validation
    summed = window_targets.sum(1)
    print(json.dumps({"preset": args.preset, "overrides": args.set, "glimpses": args.glimpses, "split": "validation",
                      "summed_window_counts_exact": (summed == counts).float().mean().item(),
                      "summed_under": (summed < counts).float().mean().item(),
                      "summed_over": (summed > counts).float().mean().item(),
                      "glimpses_holding_a_target_centre": (window_targets[mask] > 0).float().mean().item()}))
    raise SystemExit
K = train_config.task_options.get("max_targets", 12)
model = Reader(K)
optimiser = torch.optim.Adam(model.parameters(), args.lr)
glimpses, mask, unit_target, _, counts = train
history, started = [], time.time()
for epoch in range(args.epochs):
    order = torch.randperm(len(counts))
    running = 0.0
    for start in tqdm(range(0, len(order), 32), desc=f"epoch {epoch + 1}", leave=False):
        idx = order[start:start + 32]
        out = model(glimpses[idx], mask[idx])
        if args.readout == "unit":
            m = mask[idx]
            loss = torch.nn.functional.cross_entropy(out[m], unit_target[idx][m])
        else:
            loss = torch.nn.functional.cross_entropy(out, counts[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        running += loss.item() * len(idx)
    result = {"epoch": epoch + 1, "train_loss": running / len(order), "validation": scores(model, validation),
              "minutes": (time.time() - started) / 60}
    history.append(result)
    print(json.dumps(result), flush=True)

window = train[3][train[1]].float()
summary = {"preset": args.preset, "glimpses": args.glimpses, "readout": args.readout, "epochs": args.epochs,
           "train_size": args.train_size, "validation_size": args.validation_size, "threads": args.threads,
           "targets_per_window_mean": window.mean().item(),
           # a perfect per-window counter, summed over these windows, gets the scene's count right this often:
           "summed_window_counts_exact": (train[3].sum(1) == train[4]).float().mean().item(),
           "final": history[-1], "best_validation_accuracy": max(h["validation"]["accuracy"] for h in history),
           "history": history,
           "command": command_line()}
print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
if args.json:
    with open(args.json, "w") as f:
        json.dump(summary, f, indent=1)
