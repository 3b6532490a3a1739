"""Named presets: the embedded defaults of `vsaccade train --preset NAME`, as plain data.

Each preset is {"model": ModelConfig fields, "objective": ObjectiveConfig fields, "train": TrainConfig fields};
`--set section.field=value` overrides any field.
"""

from __future__ import annotations

import copy

from .config import ConfigError, ModelConfig, ObjectiveConfig, TrainConfig, check_baseline_fields

PRESETS: dict[str, dict] = {
    # The README's first command: a small single-digit cluttered task that trains in a few minutes on 2 cores.
    "demo": {
        "model": {"glimpses": 3, "glimpse_size": 24, "s_min": 0.35, "s_max": 0.5, "location_cells": 12,
                  "anchor_weight": 8.0, "hidden": 96},
        "objective": {"beta": 0.1},
        "train": {"task": "cluttered", "epochs": 3, "batch_size": 64, "lr": 2e-3, "lr_schedule": "cosine",
                  "train_size": 12000, "validation_size": 500, "test_size": 1000, "max_minutes": 4.0,
                  "task_options": {"label": "digit", "digits": 1, "distractors": 4, "canvas_size": 60,
                                   "image_size": 1200, "proxy_factor": 5.0}},
    },
    # The paper's benchmark: Two-Digit Cluttered MNIST, pair task, 2528x2528, T=4 (the sum task below).
    "cluttered-pair": {
        "model": {"glimpses": 4, "glimpse_size": 32, "s_min": 0.25, "s_max": 0.4, "location_cells": 12,
                  "anchor_weight": 8.0},
        "objective": {"beta": 0.1},
        "train": {"task": "cluttered", "epochs": 11, "batch_size": 64, "lr": 1e-3, "lr_schedule": "cosine",
                  "max_minutes": 30.0, "task_options": {"label": "pair", "proxy_factor": 8.0}},
    },
    # Megapixel MNIST as first run in docs/benchmarks/core.md (the core model unchanged, T*W^2 = 6144 pixels);
    # the ablations of docs/benchmarks/megapixel.md start from it.
    "megapixel-core": {
        "model": {"glimpses": 6, "glimpse_size": 32, "s_min": 0.02, "s_max": 0.03, "location_cells": 45,
                  "anchor_weight": 8.0, "proxy_width": 32, "hidden": 128},
        "objective": {"beta": 0.1},
        "train": {"task": "megapixel", "epochs": 20, "batch_size": 32, "lr": 1e-3, "max_minutes": 60.0},
    },
    # Megapixel MNIST, all four labels from one model (docs/benchmarks/megapixel.md): T = 6 glimpses of 32x32
    # from 64-px windows (6 * 32^2 = 6144 sampled pixels) centred on the proxy's intensity centroid around the
    # chosen cell, inhibition of return over whole windows, strided proxy encoder, per-glimpse heads and reward.
    # 40 epochs, about 22 minutes on 2 cores (docs/benchmarks/megapixel.md).
    "megapixel": {
        "model": {"glimpses": 6, "glimpse_size": 32, "s_min": 0.0427, "s_max": 0.0427, "location_cells": 45,
                  "anchor_weight": 8.0, "proxy_width": 32, "hidden": 128, "proxy_encoder": "strided",
                  "cell_score_width": 32, "glimpse_heads": True, "centroid": True, "inhibit": "cell+window"},
        "objective": {"beta": 0.1, "glimpse_loss_weight": 1.0, "glimpse_reward_weight": 1.0},
        "train": {"task": "megapixel", "epochs": 40, "batch_size": 32, "lr": 1e-3, "lr_schedule": "cosine",
                  "max_minutes": 60.0},
    },
    # Megapixel-500 (docs/benchmarks/comparison.md): 500x500 canvas, 5 digits, noise patches scaled by area to 6,
    # proxy scale 0.2 (100x100). The megapixel preset's model at this scale: 64-px windows (s = 64/500) read into
    # W = 32, 25x25 cells of 20 px.
    "megapixel-500": {
        "model": {"glimpses": 6, "glimpse_size": 32, "s_min": 0.128, "s_max": 0.128, "location_cells": 25,
                  "anchor_weight": 8.0, "proxy_width": 32, "hidden": 128, "proxy_encoder": "strided",
                  "cell_score_width": 32, "glimpse_heads": True, "centroid": True, "inhibit": "cell+window"},
        "objective": {"beta": 0.1, "glimpse_loss_weight": 1.0, "glimpse_reward_weight": 1.0},
        "train": {"task": "megapixel", "epochs": 40, "batch_size": 32, "lr": 1e-3, "lr_schedule": "cosine",
                  "max_minutes": 30.0,
                  "task_options": {"canvas_size": 500, "noise_patches": 6, "proxy_scale": 0.2}},
    },
    # Folder datasets (root/<split>/<class>/<image>, any size, RGB, labels only): set task.root. Where to look is
    # learned from the labels by the presence anchor (docs/benchmarks/labels-only.md): it needs a class of images
    # without an object, `none` (else --set model.background=CLASS); the anchor is right within its receptive field
    # (about two cells), so a window may move 1.5 cells from its cell. Sizes as formulas of the images': a proxy of
    # 0.3 x their longer side, one location cell per 8 proxy pixels, windows of 0.05-0.08 x their shorter side.
    "folder": {
        "model": {"glimpses": 4, "glimpse_size": 64, "s_min": 0.05, "s_max": 0.08, "location_cells": 0,
                  "anchor": "presence", "anchor_network": "strided", "background": "none", "anchor_weight": 1.0,
                  "offset_reach": 1.5, "inhibit": "cell+window", "proxy_encoder": "strided", "proxy_padding": "edge",
                  "cell_score_width": 32, "glimpse_heads": True},
        "objective": {"beta": 0.1, "glimpse_loss_weight": 1.0, "glimpse_reward_weight": 1.0, "proxy_loss_weight": 1.0},
        "train": {"task": "folder", "epochs": 20, "batch_size": 16, "lr": 1e-3, "lr_schedule": "cosine",
                  "eval_batch_size": 32, "task_options": {"proxy_size": 0.3, "channels": 3}},
    },
    # The large-photo benchmark (`vsaccade generate speed-signs`, then `vsaccade prepare`): 4000x3000 scenes, one
    # 40-120 px sign or none. 64x64 cells of 62 px; 150-240 px windows read into W=64; where to look comes from
    # the proxy attention classifier (the intensity anchor suits only dark backgrounds). Not a result yet: it has
    # not learned where the sign is (docs/benchmarks/files.md).
    "speed-signs": {
        "model": {"glimpses": 4, "glimpse_size": 64, "s_min": 0.05, "s_max": 0.08, "location_cells": 64,
                  "anchor": "attention", "anchor_weight": 1.0, "inhibit": "cell+window", "proxy_encoder": "strided",
                  "cell_score_width": 32, "glimpse_heads": True},
        "objective": {"beta": 0.1, "glimpse_loss_weight": 1.0, "glimpse_reward_weight": 1.0, "proxy_loss_weight": 1.0},
        "train": {"task": "folder", "epochs": 30, "batch_size": 16, "lr": 1e-3, "lr_schedule": "cosine",
                  "eval_batch_size": 32, "task_options": {"proxy_size": 256, "channels": 3}},
    },
    # Counting units in 768x768 scenes from a 64x64 mini-map (docs/benchmarks/counting.md): K = 6, T = 8 glimpses
    # of 64x64 from 50-px windows (0.065 of the scene, about one unit each), 32x32 cells of 24 px, inhibition of
    # return over windows, the count read out as the sum of per-glimpse counts (readout=count), class-balanced
    # sampling (inverse frequency, as the paper did).
    "counting-768": {
        "model": {"glimpses": 8, "glimpse_size": 64, "s_min": 0.065, "s_max": 0.065, "location_cells": 32,
                  "anchor_weight": 8.0, "centroid": True, "inhibit": "cell+window",
                  "proxy_encoder": "strided", "cell_score_width": 32, "hidden": 128, "readout": "count"},
        "objective": {"beta": 0.1},
        "train": {"task": "counting", "epochs": 20, "batch_size": 32, "lr": 1e-3, "lr_schedule": "cosine",
                  "max_minutes": 25.0, "balance_classes": True, "eval_batch_size": 64,
                  "task_options": {"scene_size": 768, "max_targets": 6}},
    },
    # The learning test's task: a 64x64 canvas with one digit, an 8x8 proxy.
    "tiny": {
        "model": {"glimpses": 3, "glimpse_size": 16, "s_min": 0.4, "s_max": 0.5, "location_cells": 4,
                  "hidden": 64, "proxy_width": 16, "glimpse_width": 32},
        "objective": {"beta": 0.05},
        "train": {"task": "cluttered", "epochs": 6, "batch_size": 32, "lr": 2e-3, "train_size": 4000,
                  "validation_size": 300, "test_size": 500,
                  "task_options": {"label": "digit", "digits": 1, "distractors": 0, "canvas_size": 64,
                                   "image_size": 64, "proxy_factor": 8.0}},
    },
}


# Counting at the experiment's own scale: 2048x2048 scenes, K = 12, the same T = 8, W = 64 from 72-px windows
# (0.035 of the scene), 32x32 cells of 64 px (the mini-map's 2x2 pixels), the same 25-minute budget.
PRESETS["counting"] = copy.deepcopy(PRESETS["counting-768"])
PRESETS["counting"]["model"].update(s_min=0.035, s_max=0.035, location_cells=32)
PRESETS["counting"]["train"]["task_options"] = {"scene_size": 2048, "max_targets": 12}

# The speed-sign benchmark with box supervision (objective.location_weight; the generator writes the boxes beside the images: task.boxes): a
# named variant, not the weakly supervised method. The first glimpse's cell is trained towards the sign's, from a
# proxy encoder that convolves at the proxy's full resolution ("wide"); no proxy-attention anchor; the glimpse
# heads read one glimpse at the sign per image (box_glimpse_weight) and only that: trained also on the model's own
# glimpses, most of which miss the sign but carry its label, they stayed at chance; and they give no per-glimpse
# reward, which, from heads that read only box glimpses, undid the location loss (docs/benchmarks/files.md).
PRESETS["speed-signs-boxes"] = copy.deepcopy(PRESETS["speed-signs"])
PRESETS["speed-signs-boxes"]["model"].update(anchor="intensity", anchor_weight=0.0, proxy_encoder="wide")
PRESETS["speed-signs-boxes"]["objective"].update(proxy_loss_weight=0.0, location_weight=1.0, box_glimpse_weight=1.0,
                                                 glimpse_loss_weight=0.0, glimpse_reward_weight=0.0)

# Box supervision of the first window's offset and side too (objective.window_weight): the window is trained towards
# one centred on the sign and 2.5 times its side, so a 40-px sign is read from a 100-px window (s = 0.033) instead of
# a 150-240-px one, its number about twice as tall in the glimpse; the box glimpses are drawn around that window.
# Measured: the loss trained the cell but not the side or offset, whose gradient the likelihood's drowns
# (docs/benchmarks/files.md, "Windows fitted to the sign").
# The class is read from the per-glimpse heads (readout=any: one glimpse sure of a sign decides), which start as the
# pre-trained reader, instead of from the mean of the glimpses' features, which 3 glimpses off the sign dilute.
PRESETS["speed-signs-windows"] = copy.deepcopy(PRESETS["speed-signs-boxes"])
PRESETS["speed-signs-windows"]["model"].update(s_min=0.03, s_max=0.1, readout="any", background="none")
PRESETS["speed-signs-windows"]["objective"].update(box_window_scale=2.5, window_weight=1.0)

# The window loss owning the windows (model.window_gradient=detached: the likelihood's gradient no longer reaches their offset
# and side, which drowned it) at 30 times the weight, and the later glimpses' cells supervised too while the sign
# is not yet found (objective.search_weight): a first glimpse on a decoy is followed by one towards the sign.
# Measured: 94.3% test; the first window's side follows the sign's (docs/benchmarks/files.md, last section).
PRESETS["speed-signs-search"] = copy.deepcopy(PRESETS["speed-signs-windows"])
PRESETS["speed-signs-search"]["model"].update(window_gradient="detached")
PRESETS["speed-signs-search"]["objective"].update(window_weight=30.0, search_weight=1.0)

PRESETS["cluttered-sum"] = copy.deepcopy(PRESETS["cluttered-pair"])
PRESETS["cluttered-sum"]["train"]["task_options"]["label"] = "sum"


def parse_value(text: str):
    """Command-line value -> Python: JSON where it parses (numbers, booleans, lists, objects), else a string."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def resolve(preset: str, overrides: list[str] = ()) -> tuple[ModelConfig, ObjectiveConfig, TrainConfig]:
    """A preset plus `section.field=value` overrides -> validated configs."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    data = copy.deepcopy(PRESETS[preset])
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in ("model", "objective", "train", "task"):
            raise ConfigError(f"override {item!r} must look like model.FIELD=VALUE, objective.FIELD=VALUE, "
                              "train.FIELD=VALUE or task.OPTION=VALUE")
        if section == "task":
            data["train"].setdefault("task_options", {})[name] = parse_value(value)
        else:
            data[section][name] = parse_value(value)
    check_baseline_overrides(data["model"].get("architecture", "saccader"), overrides)
    return (ModelConfig.from_dict(data["model"]), ObjectiveConfig.from_dict(data["objective"]),
            TrainConfig.from_dict(data["train"]))


def check_baseline_overrides(architecture: str, overrides) -> None:
    """A baseline takes the task's fields and its own from a preset (config.BASELINE_FIELDS); an override naming
    another model field would be silently ignored, so it is refused."""
    check_baseline_fields(architecture, [item.partition("=")[0].partition(".")[2] for item in overrides
                                         if item.startswith("model.")], prefix="model.")
