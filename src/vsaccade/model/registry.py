"""Model registry (timm style): every model is built from its name and a ModelConfig's fields."""

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


def create_model(name: str = "saccader", **config) -> nn.Module:
    """Build a registered model from config fields, e.g. create_model("saccader", glimpses=6)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {sorted(MODELS)}")
    model = MODELS[name](ModelConfig.from_dict(config))
    model.model_name = name
    return model
