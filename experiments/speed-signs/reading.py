"""Can a label-only model's own glimpses be read, and what makes a reader learn them? A diagnostic for
docs/benchmarks/labels-only.md.

The glimpses a trained model takes of every training and validation image are read once and cached (`--checkpoint`:
the posterior mode, read here; or `--own-train FILE --own-validation FILE --draws D`: a `fit-reader` recipe stage's
caches, D posterior draws per training image); then a reader is fitted from the image labels and its validation accuracy
reported after every epoch. If it reads far better than the model does, the model looks in the right place and its
own reader is what limits it. The reader (`--reader`): `cnn`, a small batch-normalised CNN from scratch
(`cnn-groupnorm`: group-normalised), or
`model`, the checkpoint's own glimpse encoder and per-glimpse heads (as the fit-reader stage starts; `--scratch`
re-initialises them). `--oracle BOXES` (diagnosis only, never selection): instead of the model's glimpses, one
glimpse per image centred on its box (a random place in an image without one), the window's side drawn from
`--oracle-sides LO HI` (fractions of the shorter side; the fit-reader stage's windows are 0.075-0.12): how well a
reader reads when the window is where it should be. What it is fitted on (`--bag`): `first`, the first glimpse of
each image; `any`, all T under readout=any (vsaccade.any_object_log_probs), as the fit-reader stage. With draws,
each epoch reads one draw per image, chosen at random.

    python experiments/speed-signs/reading.py --checkpoint runs/folder-s0/last.pt --root DATA --epochs 30 \
        --cache runs/reading --json runs/reading/reading.json
    python experiments/speed-signs/reading.py --checkpoint runs/folder/seed0/best.pt --draws 4 \
        --own-train runs/folder/cache/own-train-*.pt --own-validation runs/folder/cache/own-validation-*.pt \
        --reader model --bag any --epochs 10
"""

from __future__ import annotations

import argparse
import copy
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


def oracle_glimpses(root: str, boxes: str, sides: tuple[float, float], cache: Path, size: int = 64) -> dict:
    """{split: {"glimpse": (N, 1, C, W, W) uint8, "label": (N,)}}: one window per image centred on its box."""
    import vsaccade

    path = cache / f"oracle-{sides[0]}-{sides[1]}.pt"
    if path.exists():
        return torch.load(path)
    generator, data = torch.Generator().manual_seed(0), {}
    for split in ("train", "validation"):
        task = vsaccade.make_task("folder", split, root=root, boxes=boxes, proxy_size=8)
        glimpses, labels = [], []
        for i in range(len(task)):
            sample = task[i]
            draw = torch.rand(3, generator=generator).tolist()
            image, s = sample.image, sides[0] + (sides[1] - sides[0]) * draw[0]
            u, v = draw[1] * 1.6 - 0.8, draw[2] * 1.6 - 0.8
            if len(sample.boxes):
                x0, y0, x1, y1 = sample.boxes[0].tolist()
                u, v = (x0 + x1) / image.width - 1, (y0 + y1) / image.height - 1
            with torch.no_grad():
                glimpse = vsaccade.sample_glimpses([image], torch.tensor([[s, u, v]]), size)
            glimpses.append((glimpse.clamp(0, 1) * 255).round().to(torch.uint8)[:, None])
            labels.append(sample.labels["label"])
        data[split] = {"glimpse": torch.cat(glimpses), "label": torch.tensor(labels), "classes": task.classes}
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


def cnn(channels: int, size: int, classes: int, norm: str = "batch") -> nn.Module:
    def block(cin, cout):
        normalise = nn.BatchNorm2d(cout) if norm == "batch" else nn.GroupNorm(8, cout)
        return [nn.Conv2d(cin, cout, 3, 1, 1), normalise, nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*block(channels, 32), *block(32, 64), *block(64, 64), *block(64, 64), nn.Flatten(),
                         nn.Linear(64 * (size // 16) ** 2, 128), nn.ReLU(), nn.Linear(128, classes))


class ModelReader(nn.Module):
    """A copy of the checkpoint's glimpse encoder and per-glimpse heads: (N, C, W, W) -> (N, classes)."""

    def __init__(self, model, scratch: bool):
        super().__init__()
        self.encoder = copy.deepcopy(model.reader.encoder)
        self.head = copy.deepcopy(model.glimpse_heads.heads["label"])
        if scratch:
            for module in self.modules():
                if module is not self and hasattr(module, "reset_parameters"):
                    module.reset_parameters()

    def forward(self, glimpses):
        return self.head(self.encoder(glimpses))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="the model whose glimpses are read (not with --oracle)")
    parser.add_argument("--oracle", metavar="BOXES",
                        help="glimpses centred on these boxes instead (with --root, --cache)")
    parser.add_argument("--oracle-sides", type=float, nargs=2, default=(0.075, 0.12), metavar=("LO", "HI"))
    parser.add_argument("--root", help="the folder (with --cache: glimpses read here)")
    parser.add_argument("--cache", help="folder for the glimpses read here")
    parser.add_argument("--own-train", help="a fit-reader stage's cache of the training split")
    parser.add_argument("--own-validation", help="with --own-train: the stage's cache of the validation split")
    parser.add_argument("--draws", type=int, default=1, help="with --own-train: its draws per image (consecutive rows)")
    parser.add_argument("--reader", choices=("cnn", "cnn-groupnorm", "model"), default="cnn")
    parser.add_argument("--scratch", action="store_true", help="--reader model: re-initialise it")
    parser.add_argument("--bag", choices=("first", "any"), default="first")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if not args.checkpoint and not args.oracle:
        parser.error("give --checkpoint (the model's glimpses) or --oracle BOXES")
    import vsaccade

    torch.set_num_threads(args.threads)
    model = vsaccade.load(args.checkpoint) if args.checkpoint else None
    if args.oracle:
        data = oracle_glimpses(args.root, args.oracle, tuple(args.oracle_sides), Path(args.cache))
        train, validation = data["train"], data["validation"]
    elif args.own_train:
        train, validation = torch.load(args.own_train), torch.load(args.own_validation)
    else:
        data = own_glimpses(args.checkpoint, args.root, Path(args.cache))
        train, validation = data["train"], data["validation"]
    draws = args.draws if args.own_train else 1
    images = len(train["label"]) // draws
    torch.manual_seed(0)
    _, _, channels, size, _ = train["glimpse"].shape
    classes = list(data["train"]["classes"]) if args.oracle else model.config.heads[0]["classes"]
    net = (ModelReader(model, args.scratch) if args.reader == "model" else
           cnn(channels, size, len(classes), "group" if args.reader == "cnn-groupnorm" else "batch"))
    optimizer = torch.optim.Adam(net.parameters(), args.lr)
    none = classes.index("none")

    def log_probs(glimpses):  # (B, T, C, W, W) uint8 -> (B, classes)
        if args.bag == "first":
            return net(glimpses[:, 0].float() / 255).log_softmax(-1)
        b, t = glimpses.shape[:2]
        return vsaccade.any_object_log_probs(net(glimpses.flatten(0, 1).float() / 255).view(b, t, -1), none)

    history, started = [], time.time()
    for epoch in range(args.epochs):
        net.train()
        rows = torch.arange(images) * draws  # one draw of each image, chosen at random
        rows = rows + torch.randint(0, draws, (images,)) if draws > 1 else rows
        for index in rows[torch.randperm(images)].split(32):
            loss = F.nll_loss(log_probs(train["glimpse"][index]), train["label"][index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            said = torch.cat([log_probs(validation["glimpse"][i:i + 64]).argmax(1) for i in range(0, len(validation["label"]), 64)])
        accuracy = float((said == validation["label"]).float().mean())
        history.append({"epoch": epoch + 1, "seconds": time.time() - started, "validation_accuracy": accuracy})
        print(json.dumps(history[-1]), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, **{k: v for k, v in vars(args).items()
                                                   if k not in ("checkpoint", "json")}, "history": history}, indent=2))
    return history


if __name__ == "__main__":
    main()
