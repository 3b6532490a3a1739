"""Proxies cached once per split, so that probes of where to look (a localiser over proxy cells, a scorer trained
for hundreds of epochs) run in seconds an epoch instead of reading every image again. The cache is one file,
written atomically, named by the caller after what it depends on (task, split, proxy size).

    data = vsaccade.cached_proxies(vsaccade.make_task("folder", "train", root=..., proxy_size=256), "cache/train.pt")
    data["proxy"]    # (N, C', P, P) uint8: the proxies, 0-255 (the task's floats in [0, 1], rounded)
    data["labels"]   # head -> (N,) class indices, or (N, classes) for multilabel heads
    data["boxes"]    # N (n_i, 4) tensors: the objects' boxes in image pixels (empty where there are none)
    data["sizes"]    # (N, 2) image height and width
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from .atomic import cached_tensors


def cached_proxies(task, path, progress: bool = True) -> dict:
    return cached_tensors(path, lambda: read_proxies(task, Path(path).name, progress))


def read_proxies(task, name: str, progress: bool) -> dict:
    proxies, labels, boxes, sizes = [], {}, [], []
    for index in tqdm(range(len(task)), desc=f"proxies ({name})", disable=not progress):
        sample = task[index]
        if not 0 <= float(sample.proxy.min()) <= float(sample.proxy.max()) <= 1:
            raise ValueError(f"sample {index}: proxy values outside [0, 1] cannot be cached as 8 bits")
        proxies.append((sample.proxy * 255).round().to(torch.uint8))
        for head, value in sample.labels.items():
            labels.setdefault(head, []).append(torch.as_tensor(value))
        boxes.append(sample.boxes)
        sizes.append((sample.image.height, sample.image.width))
    return {"proxy": torch.stack(proxies), "labels": {h: torch.stack(v) for h, v in labels.items()}, "boxes": boxes,
            "sizes": torch.tensor(sizes)}
