"""Can a label-only model's own glimpses be read? A diagnostic for docs/benchmarks/labels-only.md.

The glimpses a trained model takes (mode policy) of every training and validation image are read once and cached;
then a small batch-normalised CNN, trained from scratch on the first glimpse of each image and its image label,
says how much of the label those glimpses carry. If it reads far better than the model does, the model looks in
the right place and its own reader is what limits it.

    python experiments/speed-signs/reading.py --checkpoint runs/folder-s0/last.pt --root DATA --epochs 30 \
        --cache runs/reading --json runs/reading/reading.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F


def own_glimpses(checkpoint: str, root: str, cache: Path) -> dict:
    """{split: {"glimpse": (N, T, C, W, W) uint8, "label": (N,)}} of the model's mode-policy glimpses, cached."""
    import vsaccade

    path = cache / "glimpses.pt"
    if path.exists():
        return torch.load(path)
    model = vsaccade.load(checkpoint).eval()
    options = model.checkpoint["train_config"]["task_options"]
    data = {}
    for split in ("train", "validation"):
        task = vsaccade.make_task("folder", split, root=root, proxy_size=options["proxy_size"], channels=options.get("channels", 3))
        glimpses, labels = [], []
        for start in range(0, len(task), 32):
            batch = vsaccade.collate([task[i] for i in range(start, min(start + 32, len(task)))])
            with torch.no_grad():
                output = model(batch.images, batch.proxy, batch.proxy_mask, sample=False, kl=False)
            glimpses.append((output.glimpses.clamp(0, 1) * 255).round().to(torch.uint8))
            labels.append(batch.labels["label"])
        data[split] = {"glimpse": torch.cat(glimpses), "label": torch.cat(labels)}
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


def reader(channels: int, size: int, classes: int) -> nn.Module:
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*block(channels, 32), *block(32, 64), *block(64, 64), *block(64, 64), nn.Flatten(),
                         nn.Linear(64 * (size // 16) ** 2, 128), nn.ReLU(), nn.Linear(128, classes))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--cache", required=True, help="folder for the cached glimpses")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = own_glimpses(args.checkpoint, args.root, Path(args.cache))
    train, validation = data["train"], data["validation"]
    torch.manual_seed(0)
    _, _, channels, size, _ = train["glimpse"].shape
    net = reader(channels, size, int(train["label"].max()) + 1)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    first = lambda glimpses: glimpses[:, 0].float() / 255
    history, started = [], time.time()
    for epoch in range(args.epochs):
        net.train()
        for index in torch.randperm(len(train["label"])).split(32):
            loss = F.cross_entropy(net(first(train["glimpse"][index])), train["label"][index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            accuracy = float((net(first(validation["glimpse"])).argmax(1) == validation["label"]).float().mean())
        history.append({"epoch": epoch + 1, "seconds": time.time() - started, "validation_accuracy": accuracy})
        print(json.dumps(history[-1]), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "history": history}, indent=2))
    return history


if __name__ == "__main__":
    main()
