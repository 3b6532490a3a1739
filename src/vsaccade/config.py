"""Typed configs. Each round-trips through plain data (`to_dict` / `from_dict`), which is how checkpoints
store them, so a checkpoint alone rebuilds its model and a run's JSON says exactly what ran."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A config that cannot be built (unknown field, wrong type, value out of range)."""


class PlainConfig:
    removed: dict = {}  # field -> its replacement, named in the error a removed field gets (a class attribute)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        removed = [name for name in unknown if name in cls.removed]
        if removed:
            raise ConfigError(f"model.{removed[0]} was removed: use {cls.removed[removed[0]]}")
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
        config = cls(**data)
        config.validate()
        return config

    def replace(self, **changes):
        return type(self).from_dict({**self.to_dict(), **changes})

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": (int, float), "bool": bool, "str": str, "list": list, "dict": dict}.get(str(f.type))
            if expected is not None and (not isinstance(value, expected) or (expected in (int, (int, float))
                                                                             and isinstance(value, bool))):
                raise ConfigError(f"{type(self).__name__}.{f.name} must be {f.type}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{type(self).__name__}.{f.name} must be finite, got {value!r}")


CELL_PIXELS = 8  # model.location_cells=0: one location cell per this many proxy pixels

# The baselines' own small configs: the ModelConfig fields each one reads (model/baselines.py, model/ats.py; a test
# checks these lists against their code). A baseline's config is those fields alone: config.json and checkpoints
# list only them, every other field keeps its default (and is ignored when a saved config names it), and an
# override of another field (`--set model.glimpses=4` on `fullres`) is refused in one line.
TASK_FIELDS = ("architecture", "heads", "image_channels", "proxy_channels", "proxy_size", "hidden", "readout")
BASELINE_FIELDS = {
    "fullres": TASK_FIELDS + ("backbone_stages",),
    "proxy": TASK_FIELDS,
    "ats": TASK_FIELDS + ("glimpses", "glimpse_size", "s_min", "s_max", "location_cells", "proxy_width",
                          "glimpse_width", "glimpse_pool", "reader"),
    "ips": TASK_FIELDS + ("glimpses", "glimpse_size", "s_min", "s_max", "glimpse_width", "glimpse_pool"),
    "resnet18": TASK_FIELDS + ("resnet_width",),
    "resnet18-224": TASK_FIELDS + ("resnet_width",),
}


def check_baseline_fields(architecture: str, names, prefix: str = "") -> None:
    """Refuse, in one line, ModelConfig fields a baseline does not have (they would be silently ignored)."""
    own = BASELINE_FIELDS.get(architecture)
    foreign = [name for name in names if own and name not in own]
    if foreign:
        raise ConfigError(f"{prefix}{foreign[0]} is not a field of the {architecture} baseline (its config: "
                          f"{', '.join(own)})")


@dataclass
class ModelConfig(PlainConfig):
    """Architecture of a Variational Saccading model (see model/saccader.py for how the pieces connect), or of a
    baseline in the same harness (`architecture`, a registered model name: see model/registry.py), whose config is
    the small subset BASELINE_FIELDS names."""

    architecture: str = "saccader"
    heads: list = field(default_factory=lambda: [{"name": "label", "num_classes": 10, "kind": "class"}])
    image_channels: int = 1
    proxy_channels: int = 1
    proxy_size: int = 16  # P: the proxy is resized to P x P (aspect kept, padding masked)
    location_cells: int = 8  # the mixture posterior chooses among location_cells^2 proxy cells; 0: one cell per
    # CELL_PIXELS proxy pixels, set from the task's proxy when training starts (train.model_config_for)
    glimpses: int = 4  # T
    glimpse_size: int = 32  # W: each glimpse is W x W pixels
    s_min: float = 0.2  # window side, as a fraction of the shorter image side
    s_max: float = 0.35
    locator: str = "mixture"  # "mixture" (categorical over proxy cells + Gaussian offset) or "gaussian"
    estimator: str = "score"  # gradient estimator for the mixture's discrete cell: "score" or "ats"
    anchor: str = "intensity"  # the mixture's location anchor: "intensity" (of the proxy), "attention" (learned) or
    # "presence" (learned; its classifier says whether any cell shows an object: needs `background`)
    anchor_network: str = "cell"  # anchor=attention/presence: per-cell features from "cell" or "strided" convolutions
    anchor_weight: float = 1.0  # weight of the anchor's logits in the cell distributions (mixture only)
    centroid: bool = False  # mixture: offsets start at the proxy's intensity centroid around each cell
    # mixture: (du, dv) in cells, added to every window's centre: where a trained model looks, moved (a probe: moving
    # a fitted model's windows onto the signs did not read them better, docs/benchmarks/labels-only.md)
    window_shift: list = field(default_factory=lambda: [0.0, 0.0])
    cell_score_width: int = 0  # width of the mixture's per-cell scoring MLP; 0: hidden (cost ~ cells^2 x width)
    policy: str = "learned"  # or an ablation: "random", "prior", "grid", "mode" (model/saccader.py)
    inhibit: str = "cell"  # "none", "cell" (a chosen cell is masked for the remaining steps), "window" (every cell
    # whose glimpse would be centred inside a chosen window) or "cell+window" (mixture)
    prior_sees_proxy: bool = True  # Gaussian prior p(z_t | x~, h_{t-1}) instead of p(z_t | h_{t-1})
    # mixture: the offset prior p(offset | cell features, h_{t-1}) instead of p(offset | h_{t-1}), so the KL does not
    # hold every window to one side whatever its cell shows
    offset_prior_sees_cell: bool = False
    # mixture: how far, in cells, the learned offset can move a window from its cell's centre. Half a cell tiles the
    # image; a learned anchor that says only "within my receptive field" (anchor=presence) needs more
    offset_reach: float = 0.5
    proxy_encoder: str = "wide"  # "wide" or "strided" (model/proxy_encoder.py)
    proxy_padding: str = "zero"  # what the proxy's networks see in its padding: "zero" or "edge" (proxy_padding.py)
    proxy_width: int = 32
    glimpse_width: int = 64
    glimpse_pool: str = "flatten"  # "flatten" or "mean" (model/glimpse_encoder.py)
    hidden: int = 128
    rnn: str = "gru"  # "gru" or "lstm"
    core_sees_glimpses: bool = True  # False: the reference code's wiring (RNN sees proxy and z only)
    # "glimpses"; "none", the control (nothing read: glimpse features zero, everything else equal); or "separate":
    # the per-glimpse heads read each glimpse through a glimpse encoder of their own, so reading can be trained
    # (the `polish-reader` and `fit-reader` recipe stages) without changing the features the core decides where to look from
    reader: str = "glimpses"
    # reader=separate: the per-glimpse heads' own encoder, "strided" (as the glimpse encoder) or "pooled"
    # (model/glimpse_encoder.py)
    reader_encoder: str = "strided"
    decoder: str = "none"  # "proxy": the optional log p(x~ | z_t, h_{t-1}) term's decoder (continuous Bernoulli)
    backbone_stages: int = 5  # "fullres" baseline: stride-2 stages after its stride-4 stem (model/baselines.py)
    resnet_width: int = 16  # "resnet18" baselines: the first stage's width (the original's 64; FLOPs grow as its square)
    glimpse_heads: bool = False  # per-glimpse classifier heads p(y | g_t), for per-glimpse losses and rewards
    readout: str = "mean"  # "mean" (an MLP over pooled features), "count" (count heads: summed counts) or "any" (class
    # heads: what the per-glimpse heads most sure of an object say, `background` where none is; model/classifier.py)
    background: str = ""  # readout="any", anchor="presence": the class that means "no object", by name (e.g. "none")
    # "detached": glimpses and the core see each window z_t detached, so its offset and side learn only from box
    # supervision (objective.window_weight) and the KL, not from the likelihood through the glimpse (which drowned it)
    window_gradient: str = "through"

    @classmethod
    def from_dict(cls, data: dict):
        architecture = data.get("architecture") if isinstance(data, dict) else None
        own = BASELINE_FIELDS.get(architecture) if isinstance(architecture, str) else None
        if own:  # a baseline: the saccader's fields take their defaults (fields no config has still get an error)
            known = {f.name for f in dataclasses.fields(cls)}
            data = {k: v for k, v in data.items() if k in own or k not in known}
        return super().from_dict(data)

    def to_dict(self) -> dict:
        data, own = super().to_dict(), BASELINE_FIELDS.get(self.architecture)
        return {k: data[k] for k in own} if own else data

    def validate(self):
        super().validate()
        choices = {"locator": ("mixture", "gaussian"), "estimator": ("score", "ats"), "rnn": ("gru", "lstm"),
                   "proxy_encoder": ("wide", "strided"), "proxy_padding": ("zero", "edge"),
                   "glimpse_pool": ("flatten", "mean"),
                   "policy": ("learned", "random", "prior", "grid", "mode"), "readout": ("mean", "count", "any"),
                   "anchor": ("intensity", "attention", "presence"), "anchor_network": ("cell", "strided"),
                   "inhibit": ("none", "cell", "window", "cell+window"),
                   "reader": ("glimpses", "none", "separate"), "reader_encoder": ("strided", "pooled"),
                   "decoder": ("none", "proxy"),
                   "window_gradient": ("through", "detached")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"ModelConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        shift = self.window_shift
        if len(shift) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) <= 4
                                      for x in shift):
            raise ConfigError(f"model.window_shift is (du, dv) in cells, each within [-4, 4]; got {shift!r}")
        if any(shift) and self.locator != "mixture":
            raise ConfigError("model.window_shift moves windows from their cells: it needs locator=mixture")
        if not 0 < self.offset_reach <= 4:
            raise ConfigError(f"model.offset_reach is in cells, in (0, 4]; got {self.offset_reach}")
        if not 0 < self.s_min <= self.s_max <= 1:
            raise ConfigError(f"need 0 < s_min <= s_max <= 1, got s_min={self.s_min}, s_max={self.s_max}")
        for name in ("glimpses", "glimpse_size", "proxy_size", "hidden", "proxy_width", "glimpse_width",
                     "backbone_stages", "resnet_width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.location_cells < 0:
            raise ConfigError(f"ModelConfig.location_cells must be a number of cells (0: one per {CELL_PIXELS} proxy "
                              f"pixels), got {self.location_cells}")
        if self.cell_score_width < 0:
            raise ConfigError(f"ModelConfig.cell_score_width must be >= 0 (0: hidden), got {self.cell_score_width}")
        if self.glimpse_size < 8:
            raise ConfigError(f"glimpse_size must be at least 8 pixels, got {self.glimpse_size}")
        if not self.heads or not all(isinstance(h, dict) and {"name", "num_classes", "kind"} <= set(h) for h in self.heads):
            raise ConfigError(f"heads must be a non-empty list of {{name, num_classes, kind}} dicts, got {self.heads!r}")
        if self.reader == "separate" and not self.glimpse_heads:
            raise ConfigError("reader=separate is read by the per-glimpse heads: it needs glimpse_heads=true")
        if self.reader_encoder != "strided" and self.reader != "separate":
            raise ConfigError(f"model.reader_encoder={self.reader_encoder} is the separate reader's encoder: it needs "
                              "model.reader=separate")
        if self.readout == "any":
            if self.architecture != "saccader" or not self.glimpse_heads:
                raise ConfigError("readout=any reads the per-glimpse heads: it needs architecture=saccader with glimpse_heads=true")
        if self.anchor_network != "cell" and self.anchor not in ("attention", "presence"):
            raise ConfigError(f"model.anchor_network={self.anchor_network} shapes the proxy attention: it needs "
                              f"model.anchor=attention or presence, got {self.anchor!r}")
        if self.readout == "any" or self.anchor == "presence":
            # A folder task names its classes only when training starts (train.model_config_for); the model checks
            # again when it is built.
            if any("classes" in h for h in self.heads) or not self.background:
                self.check_background()

    def check_background(self) -> None:
        """readout=any and anchor=presence: `background` must be a class of a class head."""
        if not any(h["kind"] == "class" and self.background in h.get("classes", ()) for h in self.heads):
            needs = " and ".join(n for n, used in (("readout=any", self.readout == "any"),
                                                    ("anchor=presence", self.anchor == "presence")) if used)
            hint = (" (the class of images that show no object; if every image shows one, use model.anchor=attention)"
                    if self.anchor == "presence" else "")
            raise ConfigError(f"{needs} needs model.background set to a class of a class head{hint}; got "
                              f"{self.background!r}, classes " + "; ".join(f"{h['name']}: {h.get('classes', 'unnamed')}"
                                                                          for h in self.heads))


# Fields removed when the model was built from parts: a saved config (checkpoint, config.json) is upgraded
# (`upgrade_model_fields`); anything else that names one (--set, create_model) gets this one-line answer.
REMOVED_MODEL_FIELDS = {
    "posterior": "model.locator (mixture or gaussian)", "proxy_attention": "model.anchor=attention (or intensity)",
    "proxy_prior_weight": "model.anchor_weight", "proxy_centroid": "model.centroid",
    "location_policy": "model.policy", "inhibition_of_return": "model.inhibit=cell (none: off)",
    "inhibit_window": "model.inhibit=cell+window (or window)", "no_glimpses": "model.reader=none",
    "separate_reader": "model.reader=separate", "reconstruct_proxy": "model.decoder=proxy",
    "detach_windows": "model.window_gradient=detached",
}


def upgrade_model_fields(data: dict) -> dict:
    """A saved model config in today's fields: each removed field becomes its replacement, with the same meaning."""
    d = dict(data)
    renames = {"posterior": "locator", "proxy_prior_weight": "anchor_weight", "proxy_centroid": "centroid",
               "location_policy": "policy"}
    for old, new in renames.items():
        if old in d:
            d[new] = d.pop(old)
    if "proxy_attention" in d:
        d["anchor"] = "attention" if d.pop("proxy_attention") else "intensity"
    no_glimpses, separate = d.pop("no_glimpses", None), d.pop("separate_reader", None)
    if no_glimpses is not None or separate is not None:
        d["reader"] = "none" if no_glimpses else "separate" if separate else "glimpses"
    if "reconstruct_proxy" in d:
        d["decoder"] = "proxy" if d.pop("reconstruct_proxy") else "none"
    if "detach_windows" in d:
        d["window_gradient"] = "detached" if d.pop("detach_windows") else "through"
    cell, window = d.pop("inhibition_of_return", None), d.pop("inhibit_window", None)
    if cell is not None or window is not None:
        rules = [name for name, on in (("cell", True if cell is None else cell), ("window", bool(window))) if on]
        d["inhibit"] = "+".join(rules) or "none"
    return d


ModelConfig.removed = REMOVED_MODEL_FIELDS


@dataclass
class ObjectiveConfig(PlainConfig):
    """The ELBO's knobs (objective.py)."""

    beta: float = 1.0  # KL weight
    beta_warmup_epochs: float = 0.0  # beta rises linearly from 0 over this many epochs
    combine: str = "sum"  # "sum" (the ELBO) or "product" (the reference code: nll * beta * KL)
    reconstruction_weight: float = 0.0
    glimpse_loss_weight: float = 0.0  # weight of the per-glimpse heads' mean -log p(y | g_t) (needs glimpse_heads)
    glimpse_reward_weight: float = 0.0  # weight of the per-glimpse score-function term (needs glimpse_heads)
    proxy_loss_weight: float = 0.0  # weight of the proxy attention classifier's -log p(y | x~) (needs model.anchor=attention)
    attention_entropy_weight: float = 0.0  # ats: weight of -H(attention), the reference's entropy regulariser
    location_weight: float = 0.0  # box supervision (not the paper's method): -log q(c_1 = a box centre's cell)
    search_weight: float = 0.0  # box supervision: -log q(c_t = a box centre's cell), t > 1, until a glimpse's cell holds one
    box_glimpse_weight: float = 0.0  # box supervision: the per-glimpse heads also read a glimpse at the box (glimpse_heads)
    box_window_scale: float = 0.0  # box supervision: windows fitted to a box are this many times its side (0: none)
    window_weight: float = 0.0  # box supervision: the first window's squared error to the fitted window (box_window_scale)

    @property
    def needs_box_cells(self) -> bool:
        return bool(self.location_weight or self.search_weight or self.window_weight)

    @property
    def box_supervised(self) -> bool:
        return self.needs_box_cells or bool(self.box_glimpse_weight)

    def validate(self):
        super().validate()
        if self.combine not in ("sum", "product"):
            raise ConfigError(f"ObjectiveConfig.combine must be 'sum' or 'product', got {self.combine!r}")
        for name in ("beta", "beta_warmup_epochs", "reconstruction_weight", "glimpse_loss_weight", "glimpse_reward_weight",
                     "proxy_loss_weight", "attention_entropy_weight", "location_weight", "search_weight",
                     "box_glimpse_weight", "box_window_scale", "window_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ObjectiveConfig.{name} must be non-negative, got {getattr(self, name)}")
        if self.window_weight and not self.box_window_scale:
            raise ConfigError("ObjectiveConfig.window_weight needs box_window_scale > 0 (the side of the window it trains towards)")


@dataclass
class TrainConfig(PlainConfig):
    """Everything a `vsaccade train` run needs besides the model and objective."""

    task: str = "cluttered"
    task_options: dict = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: str = "constant"  # "constant" or "cosine" (to zero at the last epoch, per step)
    weight_decay: float = 0.0
    clip_norm: float = 5.0  # 0 disables
    clip_value: float = 0.0  # the reference code clipped by value 0.25; 0 disables
    seed: int = 0
    max_minutes: float = 0.0  # stop training (and evaluate) after this much wall time; 0: no limit
    eval_policy: str = "mode"  # "mode" or "samples:K"
    eval_batch_size: int = 128
    num_workers: int = 0  # DataLoader worker processes building samples (0: in the training process)
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    train_size: int = 0  # 0: the task's default split sizes
    validation_size: int = 0
    test_size: int = 0
    device: str = "auto"  # "auto" (CUDA when available), "cpu" or "cuda" (under torchrun: cuda:LOCAL_RANK)
    precision: str = "fp32"  # or "bf16": forward pass and loss under torch.autocast(bfloat16)
    checkpoint_every_steps: int = 0  # also write last.pt every N optimiser steps (0: every 5 minutes and per epoch)
    max_nonfinite_steps: int = 20  # stop after this many consecutive steps skipped for a non-finite loss/gradient
    skip_bad_files: bool = False  # file datasets: leave out unreadable images (logged, counted) instead of stopping
    deterministic: bool = False  # torch.use_deterministic_algorithms (bitwise-repeatable runs, maybe slower)
    balance_classes: bool = False  # draw training samples with probability inverse to their class's frequency
    init_weights: str = ""  # a file of tensors in the model's names copied in before the first step (not on --resume)
    frozen: str = ""  # comma-separated module names ("reader.separate,glimpse_heads") not trained (train.py: freeze)

    def validate(self):
        super().validate()
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"TrainConfig.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"TrainConfig.precision must be 'fp32' or 'bf16', got {self.precision!r}")
        for name in ("checkpoint_every_steps", "num_workers", "threads", "train_size", "validation_size", "test_size",
                     "max_minutes", "weight_decay", "clip_norm", "clip_value"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TrainConfig.{name} must be non-negative, got {getattr(self, name)}")
        if self.max_nonfinite_steps < 1:
            raise ConfigError(f"TrainConfig.max_nonfinite_steps must be at least 1, got {self.max_nonfinite_steps}")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("epochs, batch_size and eval_batch_size must be positive")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        parse_policy(self.eval_policy)


def parse_policy(policy: str) -> int:
    """Test-time location policy -> number of posterior samples (0 means the posterior mode)."""
    if policy == "mode":
        return 0
    if policy.startswith("samples:") and policy[8:].isdigit() and int(policy[8:]) > 0:
        return int(policy[8:])
    raise ConfigError(f"policy must be 'mode' or 'samples:K' with K > 0, got {policy!r}")
