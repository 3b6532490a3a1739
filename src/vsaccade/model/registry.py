"""Model registry (timm style): every model is built from its name and a ModelConfig's fields.

Every registered model takes `forward(images, proxy, proxy_mask, source="posterior", sample=True, noise=None)` and
returns a SaccadeOutput (model/saccader.py); `noise` (model/noise.py) supplies every random draw. `reference_sources`
lists the other values of `source` it accepts ("random": uniform glimpses, "prior": glimpses from its prior), which
evaluation reports beside the model's own glimpses; models that choose no locations return T = 0 glimpses and have none. `glimpses_per_image` is T, and
`pixels_read(height, width)` says how many full-resolution pixels one image costs the model (None where that
needs a size the caller lacks)."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..config import ModelConfig

MODELS: dict[str, Callable[[ModelConfig], nn.Module]] = {}


def register_model(name: str):
    def decorate(builder):
        MODELS[name] = builder
        return builder

    return decorate


def create_model(name: str | None = None, **config) -> nn.Module:
    """Build a registered model from config fields, e.g. create_model("saccader", glimpses=6). The name is the
    config's `architecture` (default "saccader"); giving both with different values is an error."""
    name = name or config.get("architecture", "saccader")
    if config.setdefault("architecture", name) != name:
        raise ValueError(f"create_model({name!r}) was given architecture={config['architecture']!r}")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {sorted(MODELS)}")
    model = MODELS[name](ModelConfig.from_dict(config))
    model.model_name = name
    return model
