"""Baselines in the same harness (registry, configs, checkpoints, training command), for honest comparisons:

  * "fullres": a CNN over every full-resolution pixel, the cost our model avoids: a stride-4 stem, then
    `backbone_stages` stride-2 stages, average and max pooling over the whole map (max, so that one small object
    can decide), an MLP per head (count heads with readout="count": a count per position of the last map,
    summed, as our model sums its per-glimpse counts). The image is read whole (`read_region` of all of it):
    for a file that is a full decode, never a resize.
  * "proxy": the same kind of CNN on the proxy alone (stride-1 stem, stride-2 stages down to about 8x8): what
    the low-resolution view can tell without any glimpse.

Both choose no locations: their SaccadeOutput has T = 0 glimpses and a zero KL, so the objective is the plain
negative log-likelihood.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import instruments
from ..config import ModelConfig
from .classifier import CountReadout, count_heads
from .proxy_encoder import conv_block, halvings
from .registry import register_model
from .saccader import SaccadeOutput

MAX_WIDTH = 128


class StridedCNN(nn.Module):
    """(B, C, H, W) -> (B, hidden): a stem with `stem_stride`, `stages` stride-2 stages doubling the width (from
    `width`, at most 128), then [global mean, global max] -> MLP. Masked pixels (padding) are zeroed first."""

    def __init__(self, channels: int, width: int, stages: int, hidden: int, stem_stride: int):
        super().__init__()
        kernel = 2 * stem_stride if stem_stride > 1 else 3
        stem = nn.Conv2d(channels, width, kernel, stem_stride, (kernel - stem_stride + 1) // 2)
        layers = [nn.Sequential(stem, nn.GroupNorm(min(8, width), width), nn.ReLU(inplace=True))]
        cin = width
        for _ in range(stages):
            cout = min(MAX_WIDTH, cin * 2)
            layers.append(conv_block(cin, cout, stride=2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.channels = cin
        self.project = nn.Sequential(nn.Linear(2 * cin, hidden), nn.ReLU(inplace=True))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (pooled features (B, hidden), the final map (B, channels, h, w))."""
        maps = self.features(pixels)
        return self.project(torch.cat([maps.mean((2, 3)), maps.amax((2, 3))], 1)), maps


def empty_output(logits: dict, batch: int, channels: int, device) -> SaccadeOutput:
    return SaccadeOutput(logits=logits, z=torch.zeros(batch, 0, 3, device=device), kl=torch.zeros(batch, 0, device=device),
                         glimpses=torch.zeros(batch, 0, channels, 1, 1, device=device))


class Heads(nn.Module):
    """A linear head per label on the pooled features; with readout="count", count heads instead sum a count
    per position of the final map (the baselines' analogue of our per-glimpse counts, model/classifier.py)."""

    def __init__(self, hidden: int, heads: list[dict], readout: str = "mean", map_channels: int = 0):
        super().__init__()
        counted = count_heads(heads, readout)
        self.heads = nn.ModuleDict({h["name"]: nn.Linear(hidden, h["num_classes"]) for h in heads if h["name"] not in counted})
        self.counts = nn.ModuleDict({h["name"]: CountReadout(map_channels, h["num_classes"]) for h in heads if h["name"] in counted})

    def forward(self, features: torch.Tensor, maps: torch.Tensor | None) -> dict:
        logits = {name: head(features) for name, head in self.heads.items()}
        logits.update({name: head(maps.flatten(2).transpose(1, 2)) for name, head in self.counts.items()})
        return logits


class WholeImageClassifier(nn.Module):
    """A `trunk` and `heads` over a view of each whole image (`view`: all its pixels here), one batched pass where
    the views share a shape, else one pass each. What fullres and the ResNet-18 baselines (model/resnet.py) share."""

    reads_proxy = False  # callers need not make one (api.model_input, bench)
    reference_sources = ()
    glimpses_per_image = 0

    def view(self, image) -> torch.Tensor:
        return instruments.read_region(image, 0, 0, image.height, image.width)

    def forward(self, images, proxy, proxy_mask, source: str = "posterior", sample: bool = True, noise=None,
                kl: bool = True) -> SaccadeOutput:
        for image in images:
            if image.channels != self.config.image_channels:
                raise ValueError(f"model expects {self.config.image_channels}-channel images, got {image.channels} channels")
        device = proxy.device
        views = [self.view(image) for image in images]
        if len({view.shape for view in views}) == 1:  # one batched pass
            logits = self.heads(*self.trunk(torch.stack(views).to(device)))
        else:  # images of different sizes: one pass each
            each = [self.heads(*self.trunk(view[None].to(device))) for view in views]
            logits = {name: torch.cat([e[name] for e in each]) for name in each[0]}
        return empty_output(logits, len(images), self.config.image_channels, device)


class FullResolutionCNN(WholeImageClassifier):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.trunk = StridedCNN(config.image_channels, 16, config.backbone_stages, config.hidden, stem_stride=4)
        self.heads = Heads(config.hidden, config.heads, config.readout, self.trunk.channels)


class ProxyCNN(nn.Module):
    reference_sources = ()
    glimpses_per_image = 0

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.trunk = StridedCNN(config.proxy_channels, 16, halvings(config.proxy_size, 8), config.hidden, stem_stride=1)
        self.heads = Heads(config.hidden, config.heads, config.readout, self.trunk.channels)

    def forward(self, images, proxy, proxy_mask, source: str = "posterior", sample: bool = True, noise=None,
                kl: bool = True) -> SaccadeOutput:
        c = self.config
        if tuple(proxy.shape[1:]) != (c.proxy_channels, c.proxy_size, c.proxy_size):
            raise ValueError(f"proxy must have shape (B, {c.proxy_channels}, {c.proxy_size}, {c.proxy_size}), "
                             f"got {tuple(proxy.shape)}")
        return empty_output(self.heads(*self.trunk(proxy * proxy_mask[:, None])), len(images), c.image_channels, proxy.device)


@register_model("fullres")
def build_fullres(config: ModelConfig) -> FullResolutionCNN:
    return FullResolutionCNN(config)


@register_model("proxy")
def build_proxy(config: ModelConfig) -> ProxyCNN:
    return ProxyCNN(config)
