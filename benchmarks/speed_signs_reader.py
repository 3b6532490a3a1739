"""Can the glimpse encoder read a speed sign it is shown? A diagnostic for the speed-sign benchmark
(docs/benchmarks/files.md), like counting_oracle.py for counting: oracle glimpses, no locations to learn.

For every image of the training and validation splits of a folder dataset (`vsaccade generate speed-signs`,
`vsaccade prepare`), one glimpse is read through the real pipeline at the window `objective.box_windows` gives
the box-supervised preset (on the sign, a side in [s_min, s_max], the centre up to half a cell off; with a preset
that sets objective.box_window_scale, such as speed-signs-windows, around the window fitted to the sign; a random
window where there is no sign) and cached. Then only the preset's glimpse encoder and a linear head are trained on
them (the 9 classes: 8 numbers and `none`), and validation accuracy on the signs is printed per epoch.

With --synthetic N, N more training glimpses come from crops drawn like the scenes around a sign or none
(`tasks.speed_signs.window_crop`: the same signs, decoys, shapes and JPEG quality, windows of the same sides and
jitter), read by the same sampler; validation stays on the real scenes. --save writes the trained encoder and
head in the saccader's names, for `vsaccade train --set train.init_weights=PATH`; --load PATH --epochs 0 only
evaluates such a file. The last line printed (and the JSON) breaks the validation signs read down by box side.

    python benchmarks/speed_signs_reader.py --root runs/speed-signs-tiff --epochs 6 --json runs/speed-signs-reader.json
    python benchmarks/speed_signs_reader.py --root runs/speed-signs-tiff --synthetic 40000 --save runs/reader.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def as_uint8(glimpses: torch.Tensor) -> torch.Tensor:
    return (glimpses.clamp(0, 1) * 255).round().to(torch.uint8)


def save_cache(data: dict, path: Path) -> None:
    """torch.save through a temporary file, so a killed run never leaves a truncated cache behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(data, temporary)
    temporary.replace(path)


def draw_glimpses(function, jobs: list, workers: int, classes: list[str], desc: str) -> dict:
    """`function(job)` -> ((C, W, W) uint8 numpy glimpse, class name), over `jobs` in `workers` spawned processes
    (a function of a module they can import) -> {"glimpse": (N, C, W, W) uint8, "label": (N,) class indices}."""
    import multiprocessing

    import numpy as np
    from tqdm import tqdm

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = list(tqdm(pool.imap(function, jobs, chunksize=64), total=len(jobs), desc=desc))
    return {"glimpse": torch.from_numpy(np.stack([g for g, _ in results])),
            "label": torch.tensor([classes.index(n) for _, n in results])}


def cached_glimpses(root: str, cache: Path, model_config, window_scale: float, boxes: str = "") -> dict:
    if cache.exists():
        return torch.load(cache)
    from vsaccade.model.glimpse_sampler import sample_glimpses
    from vsaccade.model.noise import Noise
    from vsaccade.box_supervision import box_windows, fitted_windows
    from vsaccade.tasks import collate, make_task

    c, data = model_config, {}
    for split in ("train", "validation"):
        task = make_task("folder", split, root=root, proxy_size=c.proxy_size, channels=3, boxes=boxes)
        glimpses, labels, signs = [], [], []
        for start in range(0, len(task), 32):
            batch = collate([task[i] for i in range(start, min(start + 32, len(task)))])
            fitted = fitted_windows(batch.images, batch.boxes, window_scale, c.s_min, c.s_max) if window_scale else None
            z = box_windows(batch.images, batch.boxes, c.s_min, c.s_max, 0.5 / c.location_cells,
                            Noise.keyed([start + i for i in range(len(batch))]), fitted)
            glimpses.append(as_uint8(sample_glimpses(batch.images, z, c.glimpse_size)))
            labels.append(batch.labels["label"])
            signs.append(torch.tensor([len(b) > 0 for b in batch.boxes]))
        data[split] = {"glimpse": torch.cat(glimpses), "label": torch.cat(labels), "sign": torch.cat(signs)}
    save_cache(data, cache)
    return data


def synthetic_glimpse(job: tuple):
    """One crop (tasks.speed_signs.window_crop) -> its centred window's glimpse (C, W, W) uint8 and class name
    (a numpy array: torch tensors would cross the process boundary as file descriptors, one per glimpse)."""
    index, s_min, s_max, cells, size, centred_decoy = job
    import numpy as np

    from vsaccade.images import ArrayImage
    from vsaccade.model.glimpse_sampler import sample_glimpses
    from vsaccade.tasks.speed_signs import HEIGHT, WIDTH, window_crop

    torch.set_num_threads(1)
    rng = np.random.default_rng([1, index])
    window = int(round(rng.uniform(s_min, s_max) * min(WIDTH, HEIGHT)))  # as objective.box_windows draws sides
    reach = int(round(0.5 / cells * max(WIDTH, HEIGHT)))  # and centres: up to half a cell off the sign
    crop, label, _ = window_crop(0, index, window, reach, centred_decoy=centred_decoy)
    image = ArrayImage(crop)
    z = torch.tensor([[window / image.width, 0.0, 0.0]])
    glimpse = sample_glimpses([image], z, size)[0]
    return as_uint8(glimpse).numpy(), label


def synthetic_glimpses(count: int, cache: Path, model_config, classes: list[str], workers: int, centred_decoy: float) -> dict:
    if cache.exists():
        return torch.load(cache)
    c = model_config
    jobs = [(i, c.s_min, c.s_max, c.location_cells, c.glimpse_size, centred_decoy) for i in range(count)]
    data = draw_glimpses(synthetic_glimpse, jobs, workers, classes, "synthetic glimpses")
    data["sign"] = data["label"] != classes.index("none")
    save_cache(data, cache)
    return data


def validation_sign_sides(root: str, model_config, boxes: str = "") -> torch.Tensor:
    """The side in pixels of each validation image's sign box (0 without one), in the cache's order."""
    from vsaccade.tasks import make_task
    from vsaccade.tasks.folder import box_key

    task = make_task("folder", "validation", root=root, proxy_size=model_config.proxy_size, channels=3, boxes=boxes)
    boxes = [task.boxes.get(box_key(path.relative_to(task.split_dir).as_posix()), []) for path, _ in task.items]
    return torch.tensor([box[0][2] - box[0][0] if box else 0.0 for box in boxes])


def read_right(net: nn.Module, validation: dict) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        predicted = torch.cat([net(validation["glimpse"][i:i + 64].float() / 255).argmax(1)
                               for i in range(0, len(validation["label"]), 64)])
    return predicted == validation["label"]


def saccader_names(net: nn.Module) -> dict:
    encoder, head = net
    return {**{f"reader.encoder.{k}": v for k, v in encoder.state_dict().items()},
            **{f"glimpse_heads.heads.label.{k}": v for k, v in head.state_dict().items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--boxes", default="", help="the folder of boxes beside the root (vsaccade generate's DST-boxes); "
                        "default: root/<split>/boxes.csv")
    parser.add_argument("--preset", default="speed-signs-boxes")
    parser.add_argument("--set", action="append", default=[], metavar="model.FIELD=VALUE",
                        help="a preset override, e.g. model.glimpse_pool=mean (the cache holds the preset's windows)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--cosine", action="store_true", help="anneal the learning rate to 0 over the epochs (cosine)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default=None, help="default: ROOT/../<root name>-box-glimpses.pt")
    parser.add_argument("--synthetic", type=int, default=0, help="add this many glimpses of drawn crops to training")
    parser.add_argument("--centred-decoys", type=float, default=0.0, metavar="P",
                        help="the share of drawn `none` crops with a decoy where a sign would be (hard negatives)")
    parser.add_argument("--no-real-train", action="store_true", help="train on the drawn crops only (needs --synthetic)")
    parser.add_argument("--workers", type=int, default=2, help="processes drawing the crops")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--save", default=None, help="write the encoder and head here, in the saccader's names")
    parser.add_argument("--load", default=None, help="start from a --save file (with --epochs 0: only evaluate it)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.no_real_train and not args.synthetic:
        parser.error("--no-real-train needs --synthetic N")
    from vsaccade.checkpoint import upgrade_state_dict
    from vsaccade.model.glimpse_encoder import GlimpseEncoder
    from vsaccade.presets import resolve
    from vsaccade.tasks.speed_signs import SIDE_BINS

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c, objective = resolve(args.preset, [f"task.root={args.root}", *args.set])[:2]
    root = Path(args.root)
    started = time.time()
    fitted = f"-fitted{objective.box_window_scale}-s{c.s_min}-{c.s_max}" if objective.box_window_scale else ""
    data = cached_glimpses(args.root, Path(args.cache or root.parent / f"{root.name}-box-glimpses{fitted}.pt"), c,
                           objective.box_window_scale, args.boxes)
    train, validation = data["train"], data["validation"]
    classes = int(train["label"].max()) + 1
    if args.synthetic:
        if objective.box_window_scale:
            parser.error("--synthetic draws windows of the preset's sides, not fitted to the sign: use a preset "
                         "without objective.box_window_scale")
        from vsaccade.tasks import make_task

        names = make_task("folder", "train", root=args.root, proxy_size=c.proxy_size, channels=3).classes
        windows = f"s{c.s_min}-{c.s_max}-cells{c.location_cells}-w{c.glimpse_size}"  # what the drawn glimpses depend on
        if args.centred_decoys:
            windows += f"-decoys{args.centred_decoys}"
        drawn = synthetic_glimpses(args.synthetic, root.parent / f"speed-signs-synthetic-{args.synthetic}-{windows}.pt", c,
                                   names, args.workers, args.centred_decoys)
        train = drawn if args.no_real_train else {k: torch.cat([train[k], drawn[k]]) for k in train}
    read_seconds = time.time() - started
    net = nn.Sequential(GlimpseEncoder(3, c.glimpse_size, c.glimpse_width, c.hidden, c.glimpse_pool), nn.Linear(c.hidden, classes))
    if args.load:
        state = upgrade_state_dict(torch.load(args.load))
        net.load_state_dict({k.replace("reader.encoder.", "0.").replace("glimpse_heads.heads.label.", "1."): v
                             for k, v in state.items()})
    optimizer = torch.optim.Adam(net.parameters(), args.lr)
    steps = args.epochs * -(-len(train["label"]) // args.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps)) if args.cosine else None
    history = []
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(train["label"]))
        seen = right_in_training = 0
        for start in range(0, len(order), args.batch_size):
            index = order[start:start + args.batch_size]
            logits = net(train["glimpse"][index].float() / 255)
            loss = F.cross_entropy(logits, train["label"][index])
            seen += len(index)
            right_in_training += int((logits.argmax(1) == train["label"][index]).sum())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
        right = read_right(net, validation)
        row = {"epoch": epoch + 1, "seconds": time.time() - started, "accuracy_signs": float(right[validation["sign"]].float().mean()),
               "accuracy_none": float(right[~validation["sign"]].float().mean()), "accuracy": float(right.float().mean()), "train_accuracy_while_training": right_in_training / seen}
        history.append(row)
        print(json.dumps(row), flush=True)
    right, sides = read_right(net, validation), validation_sign_sides(args.root, c, args.boxes)
    by_side = {name: {"signs": int(inside.sum()), "read": float(right[inside].float().mean())}
               for name, (low, high) in SIDE_BINS.items() for inside in [(sides >= low) & (sides < high) & validation["sign"]]}
    print(json.dumps({"validation_signs_read_by_side_px": by_side}), flush=True)
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        torch.save(saccader_names(net), args.save)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": "python benchmarks/speed_signs_reader.py " + " ".join(sys.argv[1:]),
                                               "preset": args.preset, "overrides": args.set, "train_images": len(train["label"]),
                                               "validation_images": len(validation["label"]),
                                               "synthetic": args.synthetic, "centred_decoys": args.centred_decoys, "real_train": not args.no_real_train, "read_seconds": read_seconds,
                                               "threads": args.threads, "load": args.load, "cosine": args.cosine, "history": history,
                                               "validation_signs_read_by_side_px": by_side}, indent=2))


if __name__ == "__main__":
    main()
