"""VGG (Simonyan & Zisserman 2015, Table 1) and Baidu's Deep Image (Wu et al. 2015).

Written out here (rather than torchvision's builders) so that width_mult scales the fully
connected layers too; module names and order match torchvision's VGG (features.N,
avgpool, classifier.0/3/6), so its published weights load as they are.
- vgg11 (A), vgg11_lrn (A-LRN: LRN after the first conv), vgg13 (B), vgg16_c (C: the third
  conv of stages 3-5 is 1x1), vgg16 (D), vgg19 (E): 3x3 pad 1 convs, 2x2/2 max pools,
  fc 4096, 4096. vgg16 with 1000 classes: 138,357,544 parameters.
- deep_image: configuration D with fc 6144, 6144 (the Deep Image table of Wang's lecture
  notes, README References).
The fc6 input (7x7) and the 224 input are the architecture's; 224 = 7 * 2**5 is computed.
"""
import torch
import torch.nn as nn
import torchvision.models as tvm

from .classic import LRN, Conv, Pool, exact_input_size, make_features, width
from .registry import register

M = "M"
CONFIGS = {  # an int c is conv3-c, (c, 1) is conv1-c, "L" is LRN, M is 2x2/2 max pool
    "A": [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
    "A-LRN": [64, "L", M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
    "B": [64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
    "C": [64, 64, M, 128, 128, M, 256, 256, (256, 1), M, 512, 512, (512, 1), M, 512, 512, (512, 1), M],
    "D": [64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M],
    "E": [64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M],
}
FINAL = 7  # fc6 sees 7x7x512


def table(cfg):
    out = []
    for v in cfg:
        if v == M:
            out.append(Pool(2, 2))
        elif v == "L":
            out.append(LRN())
        elif isinstance(v, tuple):
            out.append(Conv(v[0], v[1]))
        else:
            out.append(Conv(v, 3, 1, 1))
    return out


class VGG(nn.Module):
    def __init__(self, cfg, fc: int, num_classes: int, in_channels: int, width_mult: float):
        super().__init__()
        self.features, c = make_features(table(cfg), in_channels, width_mult, lambda: nn.ReLU(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d((FINAL, FINAL))  # identity at the 224 input
        h = width(fc, width_mult)
        self.classifier = nn.Sequential(
            nn.Linear(c * FINAL * FINAL, h), nn.ReLU(True), nn.Dropout(0.5),
            nn.Linear(h, h), nn.ReLU(True), nn.Dropout(0.5),
            nn.Linear(h, num_classes),
        )
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.avgpool(self.features(x))  # (N, 512, 7, 7) at 224
        return self.classifier(torch.flatten(x, 1))


def _register(name, cfg, fc=4096, weights=None):
    published = None if weights is None else (lambda model: weights.get_state_dict(progress=True))

    @register(name, input_size=lambda: exact_input_size(table(CONFIGS[cfg]), FINAL), published=published)
    def build(num_classes, in_channels, width_mult):
        return VGG(CONFIGS[cfg], fc, num_classes, in_channels, width_mult)


_register("vgg11", "A", weights=tvm.VGG11_Weights.IMAGENET1K_V1)
_register("vgg11_lrn", "A-LRN")
_register("vgg13", "B", weights=tvm.VGG13_Weights.IMAGENET1K_V1)
_register("vgg16_c", "C")
_register("vgg16", "D", weights=tvm.VGG16_Weights.IMAGENET1K_V1)
_register("vgg19", "E", weights=tvm.VGG19_Weights.IMAGENET1K_V1)
_register("deep_image", "D", fc=6144)
