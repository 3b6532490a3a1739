"""The baselines users pick first: a ResNet-18-shaped CNN (He et al., 2016: a 7x7 stride-2 stem and 3x3 max pool,
then basic blocks [2, 2, 2, 2] at widths w, 2w, 4w, 8w, global mean, a linear head), written here (no torchvision),
with GroupNorm in place of BatchNorm (`norm`).
`model.resnet_width` is w (64 in the original; narrower where a budget demands: its FLOPs scale with w^2).

* `resnet18`: over the whole image at full resolution (every pixel read once), as `fullres` does with its lighter
  CNN;
* `resnet18-224`: "just resize it": over the image resized to 224 pixels on its longer side (aspect kept, padded
  to 224x224: the image's own proxy at that size).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import instruments
from ..config import ModelConfig
from .baselines import Heads, WholeImageClassifier
from .registry import register_model

RESIZED = 224
BLOCKS = (2, 2, 2, 2)


def norm(channels: int) -> nn.Module:
    """GroupNorm where ResNet has BatchNorm: per-sample normalisation, as everywhere in the package, so that N
    processes train exactly as one (docs/distributed.md) and batch 1 trains."""
    return nn.GroupNorm(min(8, channels), channels)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm(cout), nn.ReLU(inplace=True),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), norm(cout))
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet18(nn.Module):
    """(B, C, H, W) -> (pooled features (B, hidden), the final map (B, 8w, h, w))."""

    def __init__(self, channels: int, width: int, hidden: int):
        super().__init__()
        layers = [nn.Conv2d(channels, width, 7, 2, 3, bias=False), norm(width), nn.ReLU(inplace=True),
                  nn.MaxPool2d(3, 2, 1)]
        cin = width
        for stage, blocks in enumerate(BLOCKS):
            cout = width * 2 ** stage
            for block in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if stage and not block else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.channels = cin
        self.project = nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.features(pixels)
        return self.project(maps.mean((2, 3))), maps


class ResNetBaseline(WholeImageClassifier):
    def __init__(self, config: ModelConfig, resized: bool):
        super().__init__()
        self.config, self.resized = config, resized
        self.trunk = ResNet18(config.image_channels, config.resnet_width, config.hidden)
        self.heads = Heads(config.hidden, config.heads, config.readout, self.trunk.channels)

    def view(self, image) -> torch.Tensor:
        """What the network sees of one image: all its pixels, or the image resized to 224 (padded)."""
        return instruments.proxy(image, RESIZED) if self.resized else super().view(image)


@register_model("resnet18")
def build_resnet18(config: ModelConfig) -> ResNetBaseline:
    return ResNetBaseline(config, resized=False)


@register_model("resnet18-224")
def build_resnet18_resized(config: ModelConfig) -> ResNetBaseline:
    return ResNetBaseline(config, resized=True)
