"""The sample record, the task interface and the task registry.

A task is a map-style dataset of `Sample`s, deterministic per (seed, split, index). Every task declares its
label heads, so one model can carry several (Megapixel MNIST's majority/max/top/multi).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..geometry import proxy_valid_mask
from ..images import LargeImage


@dataclass(frozen=True)
class Head:
    """One label of a task: `kind` is "class" (one of num_classes) or "multilabel" (num_classes bits); `classes`
    optionally names the classes (folder datasets), otherwise they are 0..num_classes-1."""

    name: str
    num_classes: int
    kind: str = "class"
    classes: tuple = ()


@dataclass
class Sample:
    """One example: the large image, its proxy, its labels and the boxes of the objects that count.

    proxy: (C', P, P) float tensor (C' may differ from the image's channels).
    labels: head name -> int (class heads) or (num_classes,) float tensor (multilabel heads).
    boxes: (N, 4) float tensor of (x0, y0, x1, y1) in image pixels, objects only (never distractors).
    """

    image: LargeImage
    proxy: torch.Tensor
    labels: dict
    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4))


@dataclass
class Batch:
    images: list  # B LargeImages
    proxy: torch.Tensor  # (B, C', P, P)
    proxy_mask: torch.Tensor  # (B, P, P) bool, False on padding
    labels: dict  # head -> (B,) long or (B, K) float
    boxes: list  # B tensors (N_b, 4)

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device) -> "Batch":
        """The proxy, mask and labels on `device` (images stay where they are: the sampler reads them lazily)."""
        return Batch(self.images, self.proxy.to(device), self.proxy_mask.to(device),
                     {k: v.to(device) for k, v in self.labels.items()}, self.boxes)


def collate(samples: list[Sample]) -> Batch:
    proxy = torch.stack([s.proxy for s in samples])
    size = proxy.shape[-1]
    mask = torch.stack([proxy_valid_mask(s.image.height, s.image.width, size) for s in samples])
    labels = {}
    for name in samples[0].labels:
        values = [s.labels[name] for s in samples]
        labels[name] = torch.stack(values).float() if isinstance(values[0], torch.Tensor) else torch.tensor(values)
    return Batch([s.image for s in samples], proxy, mask, labels, [s.boxes for s in samples])


class Task(torch.utils.data.Dataset, abc.ABC):
    """Base class of the synthetic and file-backed tasks."""

    name: str = "task"
    heads: tuple[Head, ...] = ()
    image_channels: int = 1
    proxy_channels: int = 1
    proxy_size: int = 32
    image_height: int = 0
    image_width: int = 0

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Sample: ...

    def describe(self) -> dict:
        """Plain-data description recorded in checkpoints and result files."""
        return {"name": self.name}


TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str):
    def decorate(factory):
        TASKS[name] = factory
        return factory

    return decorate


def make_task(name: str, split: str, **options) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name](split=split, **options)
