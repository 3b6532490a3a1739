"""Diagnostics for "it does not learn": is it reading or finding?

    python benchmarks/diagnose_glimpses.py prior-hits --preset cluttered-pair --weights 1 4 8
        hit rate and coverage of an *untrained* model's sampled glimpses for several proxy-anchor weights
        (what the classifier is fed at the start of training)
    python benchmarks/diagnose_glimpses.py oracle --minutes 3
        a glimpse classifier trained on two windows centred on the digits (reading alone)
    python benchmarks/diagnose_glimpses.py sampled --minutes 3
        the same classifier trained on an untrained model's sampled glimpses (reading what the model sees)

--preset picks the task and model (e.g. megapixel, with --oracle-scale 0.0427 for its 64-px windows), --set
overrides a model field, --pool picks the classifier's glimpse pooling.

Cluttered pair task by default (`--preset`); prints validation accuracy every 100 steps and writes JSON lines
to --json if given. Needs MNIST (VSACCADE_DATA).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

import vsaccade
from vsaccade.evaluate import localisation_counts
from vsaccade.model.glimpse_encoder import GlimpseEncoder
from vsaccade.model.glimpse_sampler import glimpse_boxes_pixels, sample_glimpses
from vsaccade.presets import resolve
from vsaccade.tasks import collate, make_task
from vsaccade.train import model_config_for


def untrained_model(preset, task, overrides=()):
    model_config, _, _ = resolve(preset, list(overrides))
    return vsaccade.create_model("saccader", **model_config_for(task, model_config).to_dict())


def prior_hits(args, task):
    batch = collate([task[i] for i in range(256)])
    for weight in args.weights:
        model = untrained_model(args.preset, task, [*args.set, f"model.anchor_weight={weight}"])
        with torch.no_grad():
            output = model(batch.images, batch.proxy, batch.proxy_mask, sample=True)
        found = localisation_counts(batch.boxes, glimpse_boxes_pixels(batch.images, output.z))
        yield {"anchor_weight": weight, "overrides": args.set, "hit_rate": found["hits"] / found["glimpses"],
               "coverage": found["covered"] / found["objects"]}


def classifier_on_glimpses(args, task, validation):
    """Train GlimpseEncoder + MLP on mean glimpse features, glimpses from oracle boxes or an untrained model."""
    head_name = task.heads[0].name
    size = 32
    encoder = GlimpseEncoder(1, size, 64, 128, args.pool)
    head = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, task.heads[0].num_classes))
    optimiser = torch.optim.Adam([*encoder.parameters(), *head.parameters()], 1e-3)
    locator = untrained_model(args.preset, task, args.set) if args.mode == "sampled" else None

    def glimpses(batch, sample=True):
        if locator is not None:
            with torch.no_grad():
                return locator(batch.images, batch.proxy, batch.proxy_mask, sample=sample).glimpses
        rows = []
        for image, boxes in zip(batch.images, batch.boxes):
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2 / torch.tensor([image.width, image.height]) * 2 - 1
            rows.append(sample_glimpses([image] * len(boxes), torch.cat([torch.full((len(boxes), 1), args.oracle_scale), centres], 1), size))
        return torch.stack(rows)

    def logits(batch, sample=True):
        g = glimpses(batch, sample)
        return head(encoder(g.flatten(0, 1)).view(g.shape[0], g.shape[1], -1).mean(1))

    held_out = collate([validation[i] for i in range(500)])
    start, step = time.time(), 0
    while time.time() - start < 60 * args.minutes:
        batch = collate([task[j % len(task)] for j in range(step * 64, (step + 1) * 64)])
        loss = nn.functional.cross_entropy(logits(batch), batch.labels[head_name])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step += 1
        if step % 100 == 0:
            with torch.no_grad():
                accuracy = (logits(held_out, sample=False).argmax(1) == held_out.labels[head_name]).float().mean().item()
            yield {"mode": args.mode, "seconds": time.time() - start, "images": step * 64, "validation_accuracy": accuracy}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("prior-hits", "oracle", "sampled"))
    parser.add_argument("--preset", default="cluttered-pair")
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--pool", default="flatten", choices=("flatten", "mean"), help="glimpse encoder pooling")
    parser.add_argument("--oracle-scale", type=float, default=0.3, help="oracle window side (fraction of the image)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a field of the preset's (untrained) model")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    _, _, train_config = resolve(args.preset)
    options = train_config.task_options
    task = make_task(train_config.task, "train", **options)
    validation = make_task(train_config.task, "validation", size=500, **options)
    rows = prior_hits(args, validation) if args.mode == "prior-hits" else classifier_on_glimpses(args, task, validation)
    for row in rows:
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as handle:
                handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
