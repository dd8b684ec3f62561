"""Plain conv/pool stacks with a fully connected head, written as layer tables.

LeNet, AlexNet, CNN-F/M/S, Clarifai, OverFeat and NIN are defined here as tables of the
papers' layers. From a table we compute, never type:
- the input size whose feature map is exactly the paper's final map (`final`, e.g. 6x6
  before AlexNet's fc6), with every strided window tiling its input without remainder;
- the input width of the first fully connected layer (channels x final x final).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Conv:
    out: int
    k: int
    stride: int = 1
    pad: int = 0
    groups: int = 1


@dataclass(frozen=True)
class Pool:
    k: int
    stride: int
    kind: str = "max"  # "max" or "avg"


@dataclass(frozen=True)
class LRN:
    # AlexNet's n=5, alpha=1e-4, beta=0.75, k=2 (Caffe convention: alpha is divided by n).
    size: int = 5


def width(c: int, width_mult: float, multiple: int = 1) -> int:
    """Scaled channel count: rounded to a multiple of `multiple` (groups), at least one group."""
    return max(multiple, multiple * round(c * width_mult / multiple))


def exact_input_size(table, final: int) -> int:
    """Smallest input giving a `final` x `final` map, every strided window fitting exactly."""
    size = final
    for layer in reversed(table):
        if isinstance(layer, Conv):
            size = (size - 1) * layer.stride + layer.k - 2 * layer.pad
        elif isinstance(layer, Pool):
            size = (size - 1) * layer.stride + layer.k
    return size


def make_features(table, in_channels: int, width_mult: float, act=nn.ReLU) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    c = in_channels
    for layer in table:
        if isinstance(layer, Conv):
            out = width(layer.out, width_mult, layer.groups)
            layers += [nn.Conv2d(c, out, layer.k, layer.stride, layer.pad, groups=layer.groups), act()]
            c = out
        elif isinstance(layer, Pool):
            pool = nn.MaxPool2d if layer.kind == "max" else nn.AvgPool2d
            layers.append(pool(layer.k, layer.stride))
        elif isinstance(layer, LRN):
            layers.append(nn.LocalResponseNorm(layer.size, alpha=1e-4, beta=0.75, k=2.0))
        elif isinstance(layer, nn.Module):
            layers.append(layer)
        else:
            raise TypeError(f"unknown layer {layer!r} in a zoo layer table")
    return nn.Sequential(*layers), c


class Classic(nn.Module):
    """features -> flatten -> fully connected classifier (dropout before each hidden FC)."""

    def __init__(self, table, final: int, fc: list[int], num_classes: int, in_channels: int,
                 width_mult: float, act=nn.ReLU, dropout: float = 0.5):
        super().__init__()
        self.features, c = make_features(table, in_channels, width_mult, act)
        # Identity at the natural input; it also lets shape probes on other sizes run to the
        # head instead of failing in the first Linear (as torchvision's AlexNet and VGG do).
        self.avgpool = nn.AdaptiveAvgPool2d((final, final))
        head: list[nn.Module] = []
        n = c * final * final  # (N, C, final, final) flattened
        for h in fc:
            h = width(h, width_mult)
            head += [nn.Dropout(dropout), nn.Linear(n, h), act()] if dropout else [nn.Linear(n, h), act()]
            n = h
        head.append(nn.Linear(n, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        x = self.avgpool(self.features(x))  # (N, C, final, final)
        return self.classifier(torch.flatten(x, 1))
