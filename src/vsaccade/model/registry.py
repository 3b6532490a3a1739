"""Model registry (timm style): every model is built from its name and a ModelConfig's fields.

Every registered model takes `forward(images, proxy, proxy_mask, source="posterior", sample=True, noise=None, kl=True)`
and returns a SaccadeOutput (model/saccader.py); `noise` (model/noise.py) supplies every random draw; kl=False says
the caller will not read the KL (a prediction), which a model with a prior may then skip (its kl is None). `reference_sources`
lists the other values of `source` it accepts ("random": uniform glimpses, "prior": glimpses from its prior), which
evaluation reports beside the model's own glimpses; models that choose no locations return T = 0 glimpses and have
none. `glimpses_per_image` is T. What a model reads is counted by the images it reads (images.LargeImage: the
project's one definition of pixels read), not declared by the model."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..config import CELL_PIXELS, ConfigError, ModelConfig, check_baseline_fields

MODELS: dict[str, Callable[[ModelConfig], nn.Module]] = {}
OUTPUTS: dict[str, Callable[[ModelConfig], set]] = {}
EVERY_MODEL_GIVES = {"logits", "z", "kl", "glimpses"}


def register_model(name: str, outputs: Callable[[ModelConfig], set] = lambda config: set()):
    """Register a builder; `outputs(config)` names the SaccadeOutput fields the model fills beyond EVERY_MODEL_GIVES
    (what loss terms may need: objective.Objective.check)."""
    def decorate(builder):
        MODELS[name] = builder
        OUTPUTS[name] = outputs
        return builder

    return decorate


def model_outputs(config: ModelConfig) -> set:
    """The SaccadeOutput fields a model built from `config` fills (not None)."""
    if config.architecture not in MODELS:
        raise ValueError(f"unknown model {config.architecture!r}; registered models: {sorted(MODELS)}")
    return EVERY_MODEL_GIVES | OUTPUTS[config.architecture](config)


def create_model(name: str | None = None, **config) -> nn.Module:
    """Build a registered model from config fields, e.g. create_model("saccader", glimpses=6). The name is the
    config's `architecture` (default "saccader"); giving both with different values is an error."""
    name = name or config.get("architecture", "saccader")
    if config.setdefault("architecture", name) != name:
        raise ValueError(f"create_model({name!r}) was given architecture={config['architecture']!r}")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {sorted(MODELS)}")
    check_baseline_fields(name, sorted(set(config) & set(ModelConfig.__dataclass_fields__)))
    model_config = ModelConfig.from_dict(config)
    if model_config.location_cells == 0:
        raise ConfigError(f"model.location_cells=0 (one cell per {CELL_PIXELS} proxy pixels) is set from the task's proxy when "
                          "training starts; give a number of cells to build a model directly")
    model = MODELS[name](model_config)
    model.model_name = name
    return model
