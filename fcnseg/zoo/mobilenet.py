"""MobileNet V1 (Howard et al. 2017, Table 1) and V2 (Sandler et al. 2018).

- mobilenet_v1: no published torchvision weights; written out here: conv 3x3/2 32, then 13
  depthwise-separable blocks (3x3 depthwise + BN + ReLU, 1x1 pointwise + BN + ReLU), global
  average pool, fc. width_mult is the paper's alpha. 4,231,976 parameters at 1000 classes.
- mobilenet_v2: torchvision's builder with its own width_mult (channels rounded to multiples
  of 8, the 1280-wide last conv never narrowed, as the paper specifies).
"""
import torch
import torch.nn as nn
import torchvision.models as tvm

from .classic import width
from .registry import register

V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
             (512, 1), (512, 1), (1024, 2), (1024, 1)]  # (pointwise channels, depthwise stride)


def _conv_bn(cin, cout, k, stride, groups=1):
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class MobileNetV1(nn.Module):
    def __init__(self, num_classes, in_channels, width_mult):
        super().__init__()
        c = width(32, width_mult)
        layers = _conv_bn(in_channels, c, 3, 2)
        for out, stride in V1_BLOCKS:
            out = width(out, width_mult)
            layers += _conv_bn(c, c, 3, stride, groups=c) + _conv_bn(c, out, 1, 1)
            c = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.avgpool(self.features(x))  # (N, C, 1, 1)
        return self.fc(torch.flatten(x, 1))


# The paper trains and reports at 224 (Table 7's resolution multiplier rho = 1).
register("mobilenet_v1", input_size=lambda: 224)(MobileNetV1)

V2_WEIGHTS = tvm.MobileNet_V2_Weights.IMAGENET1K_V1


@register("mobilenet_v2", input_size=lambda: V2_WEIGHTS.transforms().crop_size[0],
          published=lambda model: V2_WEIGHTS.get_state_dict(progress=True))
def _mobilenet_v2(num_classes, in_channels, width_mult):
    from .width import rescale

    return rescale(tvm.mobilenet_v2(num_classes=num_classes, width_mult=width_mult), 1.0, in_channels)
