"""Network in Network for ImageNet (Lin et al. 2014; the Caffe model-zoo definition).

Three mlpconv blocks of AlexNet's geometry (conv 96 11x11/4, conv 256 5x5 pad 2, conv 384
3x3 pad 1, each followed by two 1x1 "cccp" convs and a 3x3/2 max pool), then a fourth
(conv 1024 3x3 pad 1, cccp 1024, cccp num_classes) and global average pooling over its 6x6
map. 7.6M parameters with 1000 classes. Caffe rounds pooling up (ceil) on a 224 input; the
exact-fit 227 input gives the same 6x6 map with every window inside the patch.
"""
import torch
import torch.nn as nn

from .classic import Conv, Pool, exact_input_size, make_features
from .registry import register

TABLE = [Conv(96, 11, 4), Conv(96, 1), Conv(96, 1), Pool(3, 2),
         Conv(256, 5, 1, 2), Conv(256, 1), Conv(256, 1), Pool(3, 2),
         Conv(384, 3, 1, 1), Conv(384, 1), Conv(384, 1), Pool(3, 2), nn.Dropout(0.5),
         Conv(1024, 3, 1, 1), Conv(1024, 1)]
FINAL = 6


class NIN(nn.Module):
    def __init__(self, num_classes, in_channels, width_mult):
        super().__init__()
        self.features, c = make_features(TABLE, in_channels, width_mult, lambda: nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Conv2d(c, num_classes, 1), nn.ReLU(inplace=True))  # cccp8
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.classifier(self.features(x))  # (N, K, 6, 6) at 227
        return torch.flatten(self.pool(x), 1)  # (N, K)


register("nin", input_size=lambda: exact_input_size(TABLE, FINAL))(NIN)
