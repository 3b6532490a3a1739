"""Recipe stages that train the glimpse reader apart from where the model looks (recipes.py). They read the
objects' boxes, so they belong to the box-supervised variant, not to the paper's method.

* `pretrain-reader`: the glimpse encoder and a per-glimpse head trained on oracle glimpses, one per training image
  at the window box supervision draws around its box (`box_supervision.box_windows`; a random window where there is
  no object), plus N crops drawn like the speed-sign scenes (`tasks.speed_signs.window_crop`), optionally with a
  decoy where a sign would be in every `none` crop (hard negatives). Writes weights.pt in the saccader's names, for
  a later stage's `train.init_weights`.
* `polish-reader`: a trained readout=any model rebuilt with model.reader=separate, whose separate encoder (a copy of
  its glimpse encoder, read only by the per-glimpse heads) and heads are trained on the model's own glimpses of the
  training scenes (labelled by what each window holds) and N crops read at windows like its own. Where the model
  looks does not change. Writes model.pt, a checkpoint evaluate/show/predict load.

Each is a loop of epochs over cached uint8 glimpses (`fit`): it saves its state after every epoch (weights, Adam,
schedule, random generator, history) and a killed stage resumes there, bitwise as if never killed. Glimpse caches
sit in the recipe's cache/ folder, named by what they depend on, written atomically.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import faults
from .atomic import cache_name, cached_tensors, save_tensors

SIDE_JITTER = 0.15  # polish: log-side and centre jitter of the drawn windows, like the trained model's fits
CROP_WINDOW, CROP_REACH = 440, 20  # polish: 480-px crops hold any window up to s_max (300 px) with its jitter
PRETRAIN_SEED, POLISH_SEED, HELD_OUT_SEED = 0, 10, 11  # window_crop seeds
# The stages' settings and their defaults (recipes.py refuses any other; `--stage NAME.SETTING=VALUE` sets one):
# drawn crops (pretrain: centred on a sign or none; polish: training and held-out), their share of `none` crops with a
# decoy where a sign would be (pretrain), epochs of Adam at `lr`, cosine-annealed to 0 over all steps if `cosine`,
# the batch size, the processes that draw the crops, and the pixels a glimpse may be moved whenever it is read
# (`shift`: `fit`, `shifted`; the fit-reader stage's too).
PRETRAIN_SETTINGS = {"crops": 0, "centred_decoys": 0.0, "epochs": 8, "lr": 1e-3, "cosine": True, "batch_size": 64,
                     "workers": 2, "shift": 0}
POLISH_SETTINGS = {"crops": 30000, "held_out": 3000, "epochs": 3, "lr": 3e-4, "cosine": True, "batch_size": 64,
                   "workers": 2, "shift": 0}
DESCRIBES_THE_MODEL = ("model_name", "model_config", "objective_config", "train_config", "task", "digit_source",
                       "vsaccade_version")


def as_uint8(glimpses: torch.Tensor) -> torch.Tensor:
    return (glimpses.clamp(0, 1) * 255).round().to(torch.uint8)


def draw_glimpses(function, jobs: list, workers: int, classes: list[str], desc: str, progress: bool) -> dict:
    """`function(job)` -> ((C, W, W) uint8 numpy glimpse, class name), over `jobs` in `workers` spawned processes ->
    {"glimpse": (N, C, W, W) uint8, "label": (N,) class indices}. Each job seeds its own draws: the result does not
    depend on the number of workers."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = list(tqdm(pool.imap(function, jobs, chunksize=64), total=len(jobs), desc=desc, disable=not progress))
    return {"glimpse": torch.from_numpy(np.stack([g for g, _ in results])),
            "label": torch.tensor([classes.index(n) for _, n in results])}


def folder_task(options: dict, split: str, proxy_size: int):
    """A split of the folder dataset the stage's task options name (its root, boxes and channels)."""
    from .tasks import make_task

    return make_task("folder", split, root=options["root"], proxy_size=proxy_size, channels=options.get("channels", 3),
                     boxes=options.get("boxes", ""))


def box_glimpses(options: dict, c, window_scale: float) -> dict:
    """One oracle glimpse per image of the train and validation splits, at box supervision's window for it."""
    from .box_supervision import box_windows, fitted_windows
    from .model.glimpse_sampler import sample_glimpses
    from .model.noise import Noise
    from .tasks import collate

    data = {}
    for split in ("train", "validation"):
        task = folder_task(options, split, c.proxy_size)
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
    return data


def crop_glimpse(job: tuple):
    """Pretraining: one crop (tasks.speed_signs.window_crop) -> its centred window's glimpse (C, W, W) uint8 and
    class name (numpy: torch tensors would cross the process boundary as file descriptors, one per glimpse)."""
    index, s_min, s_max, cells, size, centred_decoy = job
    from .images import ArrayImage
    from .model.glimpse_sampler import sample_glimpses
    from .tasks.speed_signs import HEIGHT, WIDTH, window_crop

    torch.set_num_threads(1)
    rng = np.random.default_rng([1, index])
    window = int(round(rng.uniform(s_min, s_max) * min(WIDTH, HEIGHT)))  # as box_windows draws sides
    reach = int(round(0.5 / cells * max(WIDTH, HEIGHT)))  # and centres: up to half a cell off the sign
    crop, label, _ = window_crop(PRETRAIN_SEED, index, window, reach, centred_decoy=centred_decoy)
    image = ArrayImage(crop)
    z = torch.tensor([[window / image.width, 0.0, 0.0]])
    return as_uint8(sample_glimpses([image], z, size)[0]).numpy(), label


def fitted_crop_glimpse(job: tuple):
    """Polishing: one crop read at a window like a trained model's (its side scale x the sign's, jittered) ->
    (C, W, W) uint8 and class name. `none` crops are read at such a window for a sign-sized side, at their centre,
    where half of them hold a decoy."""
    seed, index, scale, s_min, s_max, size = job
    from .images import ArrayImage
    from .model.glimpse_sampler import sample_glimpses
    from .tasks.speed_signs import HEIGHT, SIGN_SIDES, WIDTH, window_crop

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


def fit(net: nn.Module, trained: list, read, train: dict, settings: dict, state_path: Path, measure,
        progress: bool = True, log=print) -> list:
    """Epochs of Adam (cosine-annealed to 0 over all steps if settings["cosine"]) on cross-entropy of
    `read(uint8 glimpses)` against train["label"], each glimpse moved by up to settings["shift"] pixels whenever it is
    read (`shifted`), shuffled by torch's global generator. After each epoch
    `measure(epoch)` gives a history row and the state is saved to `state_path`; an existing one is resumed from."""
    optimizer = torch.optim.Adam(trained, settings["lr"])
    steps = settings["epochs"] * -(-len(train["label"]) // settings["batch_size"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps)) if settings["cosine"] else None
    history, started = [], time.time()
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        history, started = state["history"], started - history_seconds(state["history"])
        log(f"resumed after epoch {len(history)} ({state_path})")
    for epoch in range(len(history) + 1, settings["epochs"] + 1):
        net.train()
        order = torch.randperm(len(train["label"]))
        batches = range(0, len(order), settings["batch_size"])
        for start in tqdm(batches, desc=f"epoch {epoch}", disable=not progress, leave=False):
            index = order[start:start + settings["batch_size"]]
            glimpses = shifted(train["glimpse"][index], settings["shift"])
            loss = F.cross_entropy(read(glimpses), train["label"][index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
        history.append({"epoch": epoch, "seconds": time.time() - started, **measure(epoch)})
        log(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in history[-1].items() if k not in ("epoch", "seconds")))
        save_tensors({"net": net.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                      "schedule": schedule.state_dict() if schedule is not None else None, "history": history},
                     state_path)
        faults.kill_if_armed("reader-epoch", epoch)
    return history


def shifted(glimpses: torch.Tensor, shift: int) -> torch.Tensor:
    """(..., C, W, W) uint8 glimpses, each translated by its own random whole-pixel offset of at most `shift` pixels a
    side (torch's global generator), the border pixels repeated into what moves in: a reader fitted on them reads
    objects off the centre of a window as well."""
    if not shift:
        return glimpses
    flat = glimpses.flatten(0, -4)
    n, _, w, _ = flat.shape
    padded = F.pad(flat.float(), (shift,) * 4, mode="replicate").permute(0, 2, 3, 1)  # (N, W + 2s, W + 2s, C)
    rows = torch.arange(w) + torch.randint(0, 2 * shift + 1, (n, 1))  # (N, W)
    cols = torch.arange(w) + torch.randint(0, 2 * shift + 1, (n, 1))
    moved = padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (N, W, W, C)
    return moved.permute(0, 3, 1, 2).to(glimpses.dtype).view(glimpses.shape)


def history_seconds(history: list) -> float:
    """Seconds of training so far (a resumed stage goes on counting from there)."""
    return history[-1]["seconds"] if history else 0.0


def reading_accuracy(net: nn.Module, validation: dict) -> dict:
    net.eval()
    with torch.no_grad():
        predicted = torch.cat([net(validation["glimpse"][i:i + 64].float() / 255).argmax(1)
                               for i in range(0, len(validation["label"]), 64)])
    right = predicted == validation["label"]
    return {"accuracy_signs": float(right[validation["sign"]].float().mean()),
            "accuracy_none": float(right[~validation["sign"]].float().mean()), "accuracy": float(right.float().mean())}


def saccader_names(net: nn.Sequential) -> dict:
    encoder, head = net
    return {**{f"reader.encoder.{k}": v for k, v in encoder.state_dict().items()},
            **{f"glimpse_heads.heads.label.{k}": v for k, v in head.state_dict().items()}}


def from_saccader_names(state: dict) -> dict:
    from .checkpoint import upgrade_state_dict

    return {k.replace("reader.encoder.", "0.").replace("glimpse_heads.heads.label.", "1."): v
            for k, v in upgrade_state_dict(state).items()}


def pretrain_training_data(c, objective, options: dict, settings: dict, cache: Path, progress: bool) -> tuple:
    """(train, validation): box glimpses of the folder, plus settings["crops"] drawn crops in training."""
    if settings["crops"] and objective.box_window_scale:
        from .config import ConfigError

        raise ConfigError("drawn crops are read at the preset's window sides, not fitted to the sign: pretrain the "
                          "reader with a preset without objective.box_window_scale")
    windows = {"s_min": c.s_min, "s_max": c.s_max, "cells": c.location_cells, "size": c.glimpse_size}
    name = cache_name("box-glimpses", **windows, options=options, proxy_size=c.proxy_size,
                      window_scale=objective.box_window_scale)
    data = cached_tensors(cache / name, lambda: box_glimpses(options, c, objective.box_window_scale))
    train, validation = data["train"], data["validation"]
    if settings["crops"]:
        names = folder_task(options, "train", c.proxy_size).classes
        jobs = [(i, c.s_min, c.s_max, c.location_cells, c.glimpse_size, settings["centred_decoys"])
                for i in range(settings["crops"])]

        def draw():
            drawn = draw_glimpses(crop_glimpse, jobs, settings["workers"], names, "drawn crops", progress)
            return {**drawn, "sign": drawn["label"] != names.index("none")}

        name = cache_name("crops", **windows, count=settings["crops"], decoys=settings["centred_decoys"], classes=names)
        drawn = cached_tensors(cache / name, draw)
        train = {k: torch.cat([train[k], drawn[k]]) for k in train}
    return train, validation


def pretrain_reader(stage, out: Path, init: Path | None, run: dict) -> dict:
    """The pretrain-reader stage (module docstring): returns its results; writes OUT/<stage>/weights.pt. `run`: the
    recipe run's progress flag and log (recipes.run_recipe)."""
    progress, log = run["progress"], run["log"]
    from .model.glimpse_encoder import GlimpseEncoder
    from .presets import resolve

    c, objective, train_config = resolve(stage.preset, list(stage.overrides))
    settings = stage.settings
    torch.set_num_threads(train_config.threads)
    torch.manual_seed(0)
    train, validation = pretrain_training_data(c, objective, train_config.task_options, settings, out / "cache",
                                               progress)
    options = train_config.task_options
    classes = len(folder_task(options, "train", c.proxy_size).classes)
    net = nn.Sequential(GlimpseEncoder(options.get("channels", 3), c.glimpse_size, c.glimpse_width, c.hidden,
                                       c.glimpse_pool), nn.Linear(c.hidden, classes))
    if init is not None:
        net.load_state_dict(from_saccader_names(torch.load(init)))
    history = fit(net, list(net.parameters()), lambda glimpses: net(glimpses.float() / 255), train, settings,
                  out / stage.name / "state.pt", lambda epoch: reading_accuracy(net, validation), progress, log)
    save_tensors(saccader_names(net), out / stage.name / "weights.pt")
    return {"stage": stage.name, "kind": stage.kind, "train_glimpses": len(train["label"]),
            "validation_glimpses": len(validation["label"]), "settings": settings, "history": history}


def labels_of_glimpses(windows: torch.Tensor, box: torch.Tensor | None, label: int, none: int) -> torch.Tensor:
    """(T, 4) windows and an object's (4,) box (None without one), (x0, y0, x1, y1) in pixels -> (T,) what each
    glimpse shows: `label` where the window contains the box, `none` where it does not touch it, -1 (left out) where
    it cuts it."""
    from .evaluate import windows_contain

    if box is None:
        return torch.full((len(windows),), none)
    holds = windows_contain(windows, box[None])[:, 0]
    touches = ((windows[:, :2] < box[2:]) & (windows[:, 2:] > box[:2])).all(1)
    return torch.where(holds, label, torch.where(touches, -1, none))


def own_glimpses(model, options: dict, split: str, progress: bool) -> dict:
    """The model's glimpses (mode policy) of a split: (N, T, C, W, W) uint8, each glimpse's label
    (labels_of_glimpses) and the image's label."""
    from .geometry import glimpse_boxes
    from .tasks import collate

    c = model.config
    none = c.heads[0]["classes"].index(c.background)
    task = folder_task(options, split, c.proxy_size)
    glimpses, glimpse_labels, labels = [], [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(task), 32), desc=f"the model's glimpses ({split})", disable=not progress):
            batch = collate([task[i] for i in range(start, min(start + 32, len(task)))])
            out = model(batch.images, batch.proxy, batch.proxy_mask, sample=False)
            glimpses.append(as_uint8(out.glimpses))
            for image, z, boxes, label in zip(batch.images, out.z, batch.boxes, batch.labels["label"].tolist()):
                box = torch.as_tensor(boxes[0], dtype=torch.float32) if len(boxes) else None
                glimpse_labels.append(labels_of_glimpses(glimpse_boxes(z, image.height, image.width), box, label, none))
                labels.append(label)
    return {"glimpse": torch.cat(glimpses), "glimpse_label": torch.stack(glimpse_labels), "label": torch.tensor(labels)}


def read_separately(model, glimpses: torch.Tensor) -> torch.Tensor:
    """(N, C, W, W) uint8 -> (N, classes) logits of the per-glimpse head, through the separate reader."""
    features = model.reader.separate(glimpses.float() / 255)
    return model.glimpse_heads(features[:, None])[model.config.heads[0]["name"]][:, 0]


@torch.no_grad()
def polish_measure(model, own: dict, drawn: dict, none: int) -> dict:
    """Reading accuracy on the model's own validation glimpses (per glimpse where labelled; per image as readout=any
    reads its T glimpses) and on held-out drawn crops (signs, none)."""
    from .model.classifier import any_object_log_probs

    model.eval()
    n, t = own["glimpse_label"].shape
    logits = torch.cat([read_separately(model, own["glimpse"][i:i + 64].flatten(0, 1))
                        for i in range(0, n, 64)]).view(n, t, -1)
    labelled = own["glimpse_label"] >= 0
    right = logits.argmax(-1) == own["glimpse_label"]
    image_right = any_object_log_probs(logits, none).argmax(-1) == own["label"]
    drawn_right = torch.cat([read_separately(model, drawn["glimpse"][i:i + 256]).argmax(1)
                             for i in range(0, len(drawn["label"]), 256)]) == drawn["label"]
    signs = drawn["label"] != none
    return {"validation_images": float(image_right.float().mean()), "validation_glimpses": float(right[labelled].float().mean()),
            "validation_sign_glimpses": float(right[labelled & (own["glimpse_label"] != none)].float().mean()),
            "held_out_crops_signs": float(drawn_right[signs].float().mean()),
            "held_out_crops_none": float(drawn_right[~signs].float().mean())}


def with_separate_reader(payload: dict, path, encoder: str = "strided"):
    """The checkpoint's model with reader=separate (a model that has one keeps it); a new separate encoder is a copy of
    its glimpse encoder (`encoder` "strided") or, of another architecture (model/glimpse_encoder.py), freshly
    initialised by torch's global generator."""
    from .checkpoint import model_from_checkpoint, upgrade_state_dict
    from .config import ModelConfig, upgrade_model_fields
    from .model.glimpse_encoder import GLIMPSE_ENCODERS

    config = upgrade_model_fields(payload["model_config"])
    state = upgrade_state_dict(dict(payload["state_dict"]))
    if config.get("reader") != "separate":
        if encoder == "strided":
            separate = {k[len("reader.encoder."):]: v for k, v in state.items() if k.startswith("reader.encoder.")}
        else:
            c = ModelConfig.from_dict(config)
            separate = GLIMPSE_ENCODERS[encoder](c.image_channels, c.glimpse_size, c.glimpse_width, c.hidden,
                                                 c.glimpse_pool).state_dict()
        state.update({"reader.separate." + k: v for k, v in separate.items()})
        config = {**config, "reader": "separate", "reader_encoder": encoder}
    return model_from_checkpoint({**payload, "model_config": config, "state_dict": state}, path)


def polish_data(model, payload: dict, options: dict, settings: dict, cache: Path, progress: bool) -> tuple:
    """(own glimpses per split, drawn training crops, held-out crops)."""
    c = model.config
    classes = c.heads[0]["classes"]
    scale = payload["objective_config"].get("box_window_scale") or 2.5
    own = {split: own_glimpses(model.eval(), options, split, progress) for split in ("train", "validation")}

    def crops(seed: int, count: int) -> dict:
        jobs = [(seed, i, scale, c.s_min, c.s_max, c.glimpse_size) for i in range(count)]
        name = cache_name("polish-crops", seed=seed, count=count, scale=scale, s_min=c.s_min, s_max=c.s_max,
                          size=c.glimpse_size, classes=classes)
        return cached_tensors(cache / name, lambda: draw_glimpses(fitted_crop_glimpse, jobs, settings["workers"], classes,
                                                          f"crops (seed {seed})", progress))

    return own, crops(POLISH_SEED, settings["crops"]), crops(HELD_OUT_SEED, settings["held_out"])


def polish_reader(stage, out: Path, init: Path, run: dict) -> dict:
    """The polish-reader stage (module docstring): returns its results; writes OUT/<stage>/model.pt. `run`: the
    recipe run's progress flag and log (recipes.run_recipe)."""
    progress, log = run["progress"], run["log"]
    from .checkpoint import read_checkpoint, save_checkpoint
    from .config import ConfigError
    from .presets import resolve

    train_config = resolve(stage.preset, list(stage.overrides))[2]
    settings = stage.settings
    torch.set_num_threads(train_config.threads)
    torch.manual_seed(0)
    payload = read_checkpoint(init)
    if payload["model_config"].get("readout") != "any":
        raise ConfigError(f"{init}: readout is {payload['model_config'].get('readout')!r}; polishing the reader needs "
                          "readout=any")
    model = with_separate_reader(payload, init)
    none = model.config.heads[0]["classes"].index(model.config.background)
    own, drawn, held_out = polish_data(model, payload, train_config.task_options, settings, out / "cache", progress)
    labelled = own["train"]["glimpse_label"].flatten() >= 0
    train = {"glimpse": torch.cat([own["train"]["glimpse"].flatten(0, 1)[labelled], drawn["glimpse"]]),
             "label": torch.cat([own["train"]["glimpse_label"].flatten()[labelled], drawn["label"]])}
    for p in model.parameters():
        p.requires_grad_(False)
    trained = [*model.reader.separate.parameters(), *model.glimpse_heads.parameters()]
    for p in trained:
        p.requires_grad_(True)
    before = polish_measure(model, own["validation"], held_out, none)
    history = fit(model, trained, lambda glimpses: read_separately(model, glimpses), train, settings,
                  out / stage.name / "state.pt", lambda epoch: polish_measure(model, own["validation"], held_out, none),
                  progress, log)
    polished = {k: payload[k] for k in DESCRIBES_THE_MODEL if k in payload}  # not the original run's progress
    polished.update(model_config=model.config.to_dict(), state_dict=model.state_dict(),
                    polished_reader={"from": str(init), **settings})
    save_checkpoint(polished, out / stage.name / "model.pt")
    return {"stage": stage.name, "kind": stage.kind, "train_glimpses": {"own": int(labelled.sum()), "drawn": settings["crops"]},
            "settings": settings, "history": [{"epoch": 0, **before}, *history]}
