"""The `fit-reader` recipe stage: a label-only model's reader fitted to where the model looks, from image labels alone.

Trained end to end from labels, the folder preset learns where to look before it learns to read what it finds
there (docs/benchmarks/labels-only.md). This stage rebuilds a trained model with model.reader=separate and
readout=any, and fits the separate encoder (read only by the per-glimpse heads: by default a fresh
`PooledGlimpseEncoder`, which learns to read small glimpses far faster than a copy of the strided glimpse encoder)
and the per-glimpse heads on the model's own glimpses of the training images, by each image's label alone:
-log p(y | g_1..g_T) under readout=any (model/classifier.py, any_object_log_probs). An image of a 70 needs one
glimpse that says 70, an image without an object needs every glimpse to say none; no glimpse is told what it shows.
The core and the location posterior keep reading the original encoder. With window_scale 1, where the model looks does
not change; with wider windows (FIT_SETTINGS: they hold objects the trained model's windows cut, at a lower
resolution) the first lands where it did, and later ones follow from what the wider glimpses show.

The glimpses are read once and cached as uint8 in the recipe's cache/ folder: `draws` posterior samples per training
image (every epoch reads each draw once, in a shuffled order), the posterior mode for validation. The weights of the
epoch that reads validation best are kept; then how the model reads (READING_POLICIES) is chosen on validation and
kept in the checkpoint; the test split is evaluated once, at the end, with the random- and prior-glimpse controls.
The folder's boxes are never read. A killed stage resumes after its last epoch, bitwise (reader_stages.fit).
Writes OUT/<stage>/model.pt, a checkpoint evaluate/show/predict load.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .atomic import cache_name, cached_tensors, save_tensors
from .reader_stages import DESCRIBES_THE_MODEL, as_uint8, fit, folder_task, history_seconds, with_separate_reader

# The separate reader's encoder (`strided`: a copy of the glimpse encoder; `pooled`: a fresh PooledGlimpseEncoder),
# posterior draws of each training image's glimpses, epochs of Adam at `lr` (cosine-annealed to 0 if `cosine`) over
# batches of `batch_size` images; `window_scale`: the fitted model's windows are this many times the trained model's
# (model.s_min and model.s_max both scaled), read into the same glimpse_size (where they land: the module docstring);
# `shift`: each cached glimpse moved by up to this many pixels a side whenever it is read in fitting
# (reader_stages.shifted), so the reader reads an object off the window's centre; 8 against 0 on the street-scale signs'
# validation: 94.3% / 93.0% (seed 0), 95.3% / 92.7% (seed 1) (docs/benchmarks/labels-only.md).
FIT_SETTINGS = {"reader_encoder": "pooled", "draws": 4, "epochs": 12, "lr": 1e-3, "cosine": True, "batch_size": 32,
                "window_scale": 1.5, "shift": 8}
# How the fitted model reads an image, chosen on validation: at its posterior mode, or at one posterior draw (4
# glimpses either way), the kind of glimpses the reader was fitted on.
READING_POLICIES = ("mode", "samples:1")


def own_draws(model, options: dict, split: str, draws: int, progress: bool) -> dict:
    """{"glimpse": (N * D, T, C, W, W) uint8, "label": (N * D,)}: the model's glimpses of a split, D = `draws`
    posterior samples per image (consecutive rows), or its posterior mode (draws=0, D = 1). Labels only: the folder's
    boxes are not opened."""
    from .tasks import collate

    head = model.config.heads[0]["name"]
    task = folder_task({**options, "boxes": ""}, split, model.config.proxy_size)
    started, glimpses, labels = time.time(), [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(task), 32), desc=f"the model's glimpses ({split})", disable=not progress):
            batch = collate([task[i] for i in range(start, min(start + 32, len(task)))])
            looks = [model(batch.images, batch.proxy, batch.proxy_mask, sample=draws > 0, kl=False).glimpses
                     for _ in range(max(1, draws))]
            glimpses.append(as_uint8(torch.stack(looks, 1)).flatten(0, 1))  # (B * D, T, C, W, W)
            labels.append(batch.labels[head].repeat_interleave(max(1, draws)))
    return {"glimpse": torch.cat(glimpses), "label": torch.cat(labels), "seconds": time.time() - started}


def read_any(model, glimpses: torch.Tensor) -> torch.Tensor:
    """(B, T, C, W, W) uint8 glimpses -> (B, classes) log p(y | g_1..g_T) under readout=any, through the separate
    reader and the per-glimpse heads."""
    from .model.classifier import any_object_log_probs

    b, t = glimpses.shape[:2]
    c = model.config
    features = model.reader.separate(glimpses.flatten(0, 1).float() / 255).view(b, t, -1)
    logits = model.glimpse_heads(features)[c.heads[0]["name"]]
    return any_object_log_probs(logits, c.heads[0]["classes"].index(c.background))


@torch.no_grad()
def validation_accuracy(model, validation: dict) -> float:
    model.eval()
    log_probs = torch.cat([read_any(model, validation["glimpse"][i:i + 64]) for i in range(0, len(validation["label"]), 64)])
    return float((log_probs.argmax(1) == validation["label"]).float().mean())


def reader_to_fit(payload: dict, init: Path, encoder: str, window_scale: float):
    """The checkpoint's model with a separate reader of `encoder` (FIT_SETTINGS), readout=any, windows `window_scale`
    times its own, and everything but that reader and the per-glimpse heads frozen; returns (model, the parameters to
    fit)."""
    from .config import ConfigError

    config = payload["model_config"]
    if payload["train_config"]["task"] != "folder" or not config.get("glimpse_heads") or not config.get("background"):
        raise ConfigError(f"{init}: fitting the reader needs a folder model with per-glimpse heads and a background "
                          "class (the folder preset)")
    torch.manual_seed(payload["train_config"]["seed"])
    model = with_separate_reader(payload, init, encoder)
    c = model.config
    if not 0 < window_scale * c.s_max <= 1:
        raise ConfigError(f"window_scale {window_scale}: windows of {window_scale} x {c.s_max} of the shorter side do "
                          "not fit in the image (0 < window_scale * model.s_max <= 1)")
    model.config = c.replace(readout="any", s_min=c.s_min * window_scale, s_max=c.s_max * window_scale)
    if encoder != "strided":  # a fresh encoder: its heads start afresh too
        for head in model.glimpse_heads.heads.values():
            head.reset_parameters()
    for p in model.parameters():
        p.requires_grad_(False)
    trained = [*model.reader.separate.parameters(), *model.glimpse_heads.parameters()]
    for p in trained:
        p.requires_grad_(True)
    return model, trained


def fit_reader(stage, out: Path, init: Path, run: dict) -> dict:
    """The fit-reader stage (module docstring): returns its results; writes OUT/<stage>/model.pt. `run`: the recipe
    run's progress flag and log (recipes.run_recipe)."""
    from .checkpoint import read_checkpoint
    from .presets import resolve
    from .recipes import evaluate_checkpoint
    from .train import code_version

    progress, log, settings = run["progress"], run["log"], stage.settings
    torch.set_num_threads(resolve(stage.preset, list(stage.overrides))[2].threads)
    payload = read_checkpoint(init)
    model, trained = reader_to_fit(payload, init, settings["reader_encoder"], settings["window_scale"])
    options = payload["train_config"]["task_options"]
    with open(init, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    own = {split: cached_tensors(out / "cache" / cache_name(f"own-{split}", checkpoint=digest, draws=draws,
                                                              window_scale=settings["window_scale"]),
                                 lambda split=split, draws=draws: own_draws(model.eval(), options, split, draws, progress))
           for split, draws in (("train", settings["draws"]), ("validation", 0))}
    best_path = out / stage.name / "best-reader.pt"  # the epoch that reads validation best so far, and its weights
    if best_path.exists():
        best = torch.load(best_path)
    else:
        best = {"epoch": 0, "accuracy": validation_accuracy(model, own["validation"])}
        best["before"] = best["accuracy"]
    log(f"stage {stage.name}: reads validation {best['before']:.4f} before fitting")

    def measure(epoch: int) -> dict:
        accuracy = validation_accuracy(model, own["validation"])
        if accuracy > best["accuracy"]:
            best.update(epoch=epoch, accuracy=accuracy, state={k: v.clone() for k, v in model.state_dict().items()})
            save_tensors(best, best_path)
        return {"validation_images": accuracy}

    initial = {k: v.clone() for k, v in model.state_dict().items()}
    # cross_entropy of log-probabilities is their negative log-likelihood: log_softmax leaves them unchanged
    history = fit(model, trained, lambda glimpses: read_any(model, glimpses), own["train"], settings,
                  out / stage.name / "state.pt", measure, progress, log)
    model.load_state_dict(best.get("state", initial))  # no epoch read validation better: the model as it was
    fitted = {k: payload[k] for k in DESCRIBES_THE_MODEL if k in payload}
    fitted.update(model_config=model.config.to_dict(), state_dict=model.state_dict(),
                  fitted_reader={"from": str(init), "epoch": best["epoch"], **settings})
    path = out / stage.name / "model.pt"
    policy, by_policy = save_with_reading_policy(fitted, path, progress)
    minutes = (own["train"]["seconds"] + own["validation"]["seconds"] + history_seconds(history)) / 60
    return {"stage": stage.name, "kind": stage.kind, "settings": settings, "minutes": minutes,
            "vsaccade_version": code_version(),
            "train_bags": len(own["train"]["label"]), "chosen_epoch": best["epoch"],
            "history": [{"epoch": 0, "validation_images": best["before"]}, *history],
            "eval_policy": policy, "validation_by_policy": by_policy,
            "test": evaluate_checkpoint(path, "test", True, progress)}


def save_with_reading_policy(fitted: dict, path: Path, progress: bool) -> tuple[str, dict]:
    """Save the fitted model at `path` with the evaluation policy of READING_POLICIES that reads the validation split
    best (ties: the first) as its own (train_config.eval_policy: what evaluate, predict and the test evaluation use);
    returns it and each policy's validation accuracy."""
    from .checkpoint import save_checkpoint
    from .recipes import evaluate_checkpoint
    from .results import head_metrics

    save_checkpoint(fitted, path)
    accuracy = {policy: next(iter(head_metrics(evaluate_checkpoint(path, "validation", False, progress, policy))
                                  .values())) for policy in READING_POLICIES}
    chosen = max(READING_POLICIES, key=lambda policy: (accuracy[policy], -READING_POLICIES.index(policy)))
    save_checkpoint({**fitted, "train_config": {**fitted["train_config"], "eval_policy": chosen}}, path)
    return chosen, accuracy
