"""The worked example of pixelwise classification in Wang's lecture notes (README,
References): a 15x15 patch -> 1x1 output.

Layers (size/stride): conv1 2x2/1, pool1 2x2/2, conv2 2x2/1, pool2 3x3/3, conv3 2x2/1.
Its even kernels and the stride-3 pool make it the smallest net that exercises alignment.
"""
import torch.nn as nn

from .classic import Conv, Pool, exact_input_size, width
from .registry import register

TABLE = [Conv(8, 2), Pool(2, 2), Conv(16, 2), Pool(3, 3)]  # then conv3 2x2 -> classes
FINAL = 2  # conv3 (2x2) turns a 2x2 map into the 1x1 output


def _build(num_classes, in_channels, width_mult):
    c1, c2 = width(8, width_mult), width(16, width_mult)
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 2), nn.ReLU(inplace=True),  # (N, c1, 14, 14) on 15x15
        nn.MaxPool2d(2, 2),  # (N, c1, 7, 7)
        nn.Conv2d(c1, c2, 2), nn.ReLU(inplace=True),  # (N, c2, 6, 6)
        nn.MaxPool2d(3, 3),  # (N, c2, 2, 2)
        nn.Conv2d(c2, num_classes, 2),  # (N, K, 1, 1)
    )


register("toy", input_size=lambda: exact_input_size(TABLE, FINAL))(_build)
