"""Polish a trained speed-sign model's reader on many more signs than the benchmark's scenes hold
(docs/benchmarks/files.md). With `readout=any` the image's class comes from each glimpse read alone (the
per-glimpse heads), so reading can be trained apart from looking. The model is rebuilt with
`model.reader=separate`: a copy of its glimpse encoder, used only by the per-glimpse heads, while the core
keeps reading the original's features, so where the model looks does not change. Only the copy and the heads
are then trained, on:

  * the model's own glimpses of the training scenes (its mode policy, T per image), each labelled by what it
    holds: the sign's class where the window contains the sign's box, `none` where it does not touch it, left
    out where it cuts it;
  * N crops drawn like the scenes (`tasks.speed_signs.window_crop`, a seed of their own) read at windows like
    the trained model's: side box_window_scale x the sign's side, times exp(N(0, 0.15^2)), clamped to
    [s_min, s_max]; centre off the sign's by N(0, 0.15^2) sign sides each way. `none` crops are read at such a
    window for a sign of a side drawn like the signs', at their centre, where half of them hold a decoy (the
    hard negatives a model that seeks signs looks at).

Held out: the model's glimpses of the validation scenes and M more drawn crops (another seed). Reading accuracy
on both is printed before and after every epoch. After the last (a cosine schedule to 0; no epoch is selected),
writes a checkpoint that `vsaccade evaluate` loads.

    python benchmarks/speed_signs_polish.py runs/speed-signs-search-s0/best.pt --root runs/speed-signs-tiff \
        --crops 30000 --held-out 3000 --epochs 3 --out runs/speed-signs-search-s0-polished.pt \
        --json runs/speed-signs-search-s0-polish.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from speed_signs_reader import as_uint8, draw_glimpses, save_cache  # a sibling: python puts a script's folder on the path

SIDE_JITTER = 0.15  # log-side and centre jitter of the drawn windows, in the spirit of the trained model's fit
CROP_WINDOW, CROP_REACH = 440, 20  # crops of 480 px hold any window up to s_max (300 px) with its jitter
TRAIN_SEED, HELD_OUT_SEED = 10, 11  # window_crop seeds; the reader pre-training used 0
DESCRIBES_THE_MODEL = ("model_name", "model_config", "objective_config", "train_config", "task", "digit_source", "vsaccade_version")


def drawn_glimpse(job: tuple):
    """One crop (tasks.speed_signs.window_crop) read at a fitted-like window -> (C, W, W) uint8 and class name."""
    seed, index, scale, s_min, s_max, size = job
    from vsaccade.images import ArrayImage
    from vsaccade.model.glimpse_sampler import sample_glimpses
    from vsaccade.tasks.speed_signs import HEIGHT, SIGN_SIDES, WIDTH, window_crop

    torch.set_num_threads(1)
    crop, label, box = window_crop(seed, index, CROP_WINDOW, CROP_REACH, centred_decoy=0.5)
    rng = np.random.default_rng([seed, 4, index])
    jitter = rng.normal(0, SIDE_JITTER, 3)
    short = min(WIDTH, HEIGHT)  # window sides are fractions of the scene's shorter side, not the crop's
    if box is None:
        sign_side, (x, y) = rng.uniform(*SIGN_SIDES), (crop.shape[1] / 2, crop.shape[0] / 2)
    else:
        sign_side = box[2] - box[0]
        x = (box[0] + box[2]) / 2 + jitter[1] * sign_side
        y = (box[1] + box[3]) / 2 + jitter[2] * sign_side
    side = float(np.clip(scale * sign_side * np.exp(jitter[0]), s_min * short, s_max * short))
    image = ArrayImage(crop)
    z = torch.tensor([[side / min(image.height, image.width), 2 * x / image.width - 1, 2 * y / image.height - 1]],
                     dtype=torch.float32)
    return as_uint8(sample_glimpses([image], z, size)[0]).numpy(), label


def drawn_glimpses(seed: int, count: int, cache: Path, config, scale: float, classes: list[str], workers: int) -> dict:
    if cache.exists():
        return torch.load(cache)
    jobs = [(seed, i, scale, config.s_min, config.s_max, config.glimpse_size) for i in range(count)]
    data = draw_glimpses(drawn_glimpse, jobs, workers, classes, f"crops (seed {seed})")
    save_cache(data, cache)
    return data


def crops_cache(root: Path, seed: int, count: int, config, scale: float) -> Path:
    """Where the drawn glimpses are cached, named by everything they depend on."""
    return root.parent / f"speed-signs-polish-crops-seed{seed}-{count}-x{scale}-s{config.s_min}-{config.s_max}-w{config.glimpse_size}.pt"


def labels_of_glimpses(windows: torch.Tensor, box: torch.Tensor | None, label: int, none: int) -> torch.Tensor:
    """(T, 4) windows and the sign's (4,) box (None without a sign), both (x0, y0, x1, y1) in pixels -> (T,) what
    each glimpse shows: `label` where the window contains the box, `none` where it does not touch it, -1 (left out)
    where it cuts it."""
    from vsaccade.evaluate import windows_contain

    if box is None:
        return torch.full((len(windows),), none)
    holds = windows_contain(windows, box[None])[:, 0]
    touches = ((windows[:, :2] < box[2:]) & (windows[:, 2:] > box[:2])).all(1)
    return torch.where(holds, label, torch.where(touches, -1, none))


def own_glimpses(model, root: str, split: str, cache: Path, boxes: str = "") -> dict:
    """The model's glimpses (mode policy) of a split's scenes: (N, T, C, W, W) uint8, each glimpse's label
    (labels_of_glimpses) and the image's label."""
    if cache.exists():
        return torch.load(cache)
    from tqdm import tqdm

    from vsaccade.geometry import glimpse_boxes
    from vsaccade.tasks import collate, make_task

    c = model.config
    none = c.heads[0]["classes"].index(c.background)
    task = make_task("folder", split, root=root, proxy_size=c.proxy_size, channels=c.image_channels, boxes=boxes)
    glimpses, glimpse_labels, labels = [], [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(task), 32), desc=f"the model's glimpses ({split})"):
            batch = collate([task[i] for i in range(start, min(start + 32, len(task)))])
            out = model(batch.images, batch.proxy, batch.proxy_mask, sample=False)
            glimpses.append(as_uint8(out.glimpses))
            for image, z, boxes, label in zip(batch.images, out.z, batch.boxes, batch.labels["label"].tolist()):
                box = torch.as_tensor(boxes[0], dtype=torch.float32) if len(boxes) else None
                glimpse_labels.append(labels_of_glimpses(glimpse_boxes(z, image.height, image.width), box, label, none))
                labels.append(label)
    data = {"glimpse": torch.cat(glimpses), "glimpse_label": torch.stack(glimpse_labels), "label": torch.tensor(labels)}
    save_cache(data, cache)
    return data


def read(model, glimpses: torch.Tensor) -> torch.Tensor:
    """(N, C, W, W) uint8 -> (N, classes) logits of the per-glimpse head, through the reader."""
    features = model.reader.separate(glimpses.float() / 255)
    return model.glimpse_heads(features[:, None])[model.config.heads[0]["name"]][:, 0]


@torch.no_grad()
def measure(model, own: dict, drawn: dict, none: int) -> dict:
    """Reading accuracy on the model's own validation glimpses (per glimpse, where labelled; and per image, as
    readout=any reads its T glimpses: the model's validation accuracy, since the windows do not depend on the
    reader, up to the glimpses' 8-bit storage) and on the held-out drawn crops (signs, none)."""
    from vsaccade.model.classifier import any_object_log_probs

    model.eval()
    n, t = own["glimpse_label"].shape
    logits = torch.cat([read(model, own["glimpse"][i:i + 64].flatten(0, 1)) for i in range(0, n, 64)]).view(n, t, -1)
    labelled = own["glimpse_label"] >= 0
    per_glimpse = (logits.argmax(-1) == own["glimpse_label"])[labelled]
    image_right = any_object_log_probs(logits, none).argmax(-1) == own["label"]
    drawn_right = torch.cat([read(model, drawn["glimpse"][i:i + 256]).argmax(1) for i in range(0, len(drawn["label"]), 256)]) == drawn["label"]
    signs = drawn["label"] != none
    return {"validation_images": float(image_right.float().mean()), "validation_glimpses": float(per_glimpse.float().mean()),
            "validation_sign_glimpses": float((logits.argmax(-1) == own["glimpse_label"])[labelled & (own["glimpse_label"] != none)].float().mean()),
            "held_out_crops_signs": float(drawn_right[signs].float().mean()), "held_out_crops_none": float(drawn_right[~signs].float().mean())}


def with_reader(payload: dict, path):
    """The checkpoint's model with reader=separate, its separate encoder a copy of its glimpse encoder."""
    from vsaccade.checkpoint import model_from_checkpoint, upgrade_state_dict
    from vsaccade.config import upgrade_model_fields

    state = upgrade_state_dict(dict(payload["state_dict"]))
    config = upgrade_model_fields(payload["model_config"])
    if config.get("reader") != "separate":
        state.update({"reader.separate." + k[len("reader.encoder."):]: v for k, v in state.items()
                      if k.startswith("reader.encoder.")})
    return model_from_checkpoint({**payload, "model_config": {**config, "reader": "separate"}, "state_dict": state}, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a trained speed-sign model with readout=any")
    parser.add_argument("--root", required=True, help="the prepared folder dataset it was trained on")
    parser.add_argument("--boxes", default="", help="the folder of boxes beside the root (vsaccade generate's DST-boxes); "
                        "default: root/<split>/boxes.csv")
    parser.add_argument("--crops", type=int, default=30000, help="drawn crops to train on")
    parser.add_argument("--held-out", type=int, default=3000, help="drawn crops to measure on")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="processes drawing the crops")
    parser.add_argument("--out", required=True, help="the polished checkpoint, after the last epoch (the learning rate "
                        "annealed to 0; validation is measured, not selected on)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from vsaccade.checkpoint import read_checkpoint, save_checkpoint

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.time()
    payload = read_checkpoint(args.checkpoint)
    if payload["model_config"].get("readout") != "any":
        sys.exit(f"{args.checkpoint}: readout is {payload['model_config'].get('readout')!r}; polishing the reader needs readout=any")
    model = with_reader(payload, args.checkpoint)
    c = model.config
    classes = c.heads[0]["classes"]
    none = classes.index(c.background)
    scale = payload["objective_config"].get("box_window_scale") or 2.5
    root, name = Path(args.root), Path(args.checkpoint).parent.name + "-" + Path(args.checkpoint).stem
    if not (root / "train").is_dir():
        sys.exit(f"{root}: no train/ folder (a prepared speed-sign dataset: root/<split>/<class>/<image>, boxes.csv)")
    own = {split: own_glimpses(model.eval(), args.root, split, root.parent / f"speed-signs-polish-own-{name}-{split}.pt",
                             args.boxes)
           for split in ("train", "validation")}
    drawn = drawn_glimpses(TRAIN_SEED, args.crops, crops_cache(root, TRAIN_SEED, args.crops, c, scale), c, scale, classes, args.workers)
    held_out = drawn_glimpses(HELD_OUT_SEED, args.held_out, crops_cache(root, HELD_OUT_SEED, args.held_out, c, scale), c, scale,
                              classes, args.workers)
    labelled = own["train"]["glimpse_label"].flatten() >= 0
    train_glimpses = torch.cat([own["train"]["glimpse"].flatten(0, 1)[labelled], drawn["glimpse"]])
    train_labels = torch.cat([own["train"]["glimpse_label"].flatten()[labelled], drawn["label"]])
    read_seconds = time.time() - started

    for p in model.parameters():
        p.requires_grad_(False)
    trained = [*model.reader.separate.parameters(), *model.glimpse_heads.parameters()]
    for p in trained:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(trained, args.lr)
    steps = args.epochs * -(-len(train_labels) // args.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    history = [{"epoch": 0, **measure(model, own["validation"], held_out, none)}]
    print(json.dumps(history[-1]), flush=True)
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(train_labels))
        for start in range(0, len(order), args.batch_size):
            index = order[start:start + args.batch_size]
            loss = F.cross_entropy(read(model, train_glimpses[index]), train_labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        history.append({"epoch": epoch, "seconds": time.time() - started, **measure(model, own["validation"], held_out, none)})
        print(json.dumps(history[-1]), flush=True)
    # What rebuilds and describes the model; not the original run's progress (its epoch, metrics, optimiser)
    polished = {k: payload[k] for k in DESCRIBES_THE_MODEL if k in payload}
    polished.update(model_config=c.to_dict(), state_dict=model.state_dict(),
                    polished_reader={"from": str(args.checkpoint), "epochs": args.epochs, "crops": args.crops, "lr": args.lr})
    save_checkpoint(polished, args.out)
    summary = {"command": "python benchmarks/speed_signs_polish.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "train_glimpses": {"own": int(labelled.sum()), "drawn": args.crops}, "held_out_crops": {"signs": int((held_out["label"] != none).sum()), "none": int((held_out["label"] == none).sum())},
               "read_seconds": read_seconds, "threads": args.threads, "history": history}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
