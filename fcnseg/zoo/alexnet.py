"""AlexNet and its 2013-2014 relatives, as the tables of Wang's lecture notes give them
(README, References).

Each is a layer table (see classic.py) plus the paper's final map before fc6; the input
size is computed from both (AlexNet, CNN-F/M, Clarifai: 227; OverFeat fast: 231,
accurate: 221; CNN-S: 233).

- alexnet: Krizhevsky et al. 2012 as in the notes' table: conv1 96 11x11/4 pad 0, LRN,
  max 3/2, conv2 256 5x5 pad 2, LRN, max 3/2, conv3 384, conv4 384, conv5 256 (3x3 pad 1),
  max 3/2, fc 4096, 4096. Single-tower (ungrouped): conv 3.7M + FC 58.6M = 62,378,344
  parameters with 1000 classes, the notes' numbers; the original two-GPU split (groups=2
  in conv2/4/5) has 60,965,224. LRN follows the ReLU and precedes pooling, as in the paper.
- alexnet_torchvision: torchvision's variant (64/192/384/256/256 channels, conv1 pad 2, no
  LRN, adaptive 6x6 average pool), the one with published ImageNet weights.
- cnn_f, cnn_m, cnn_s: Chatfield et al. 2014. The paper crops 224 and pads its pooling
  windows by one row/column at the bottom/right (MatConvNet); a window running past the
  patch cannot be reproduced by a shared dense pass, so the exact-fit input (227, 227, 233)
  is used instead: same layer shapes (fc6 sees 6x6) and the same parameter counts.
- clarifai: Zeiler & Fergus 2013: conv1 96 7x7/2, LRN, max 3/2, conv2 256 5x5/2 pad 1, LRN,
  max 3/2, conv3 384, conv4 384, conv5 256 (3x3 pad 1), max 3/2, fc 4096, 4096.
- overfeat_fast / overfeat_accurate: Sermanet et al. 2014, Tables 1 and 3 (no LRN).
"""
import torchvision

from .classic import LRN, Classic, Conv, Pool, exact_input_size
from .registry import register
from .width import rescale

ALEXNET = [Conv(96, 11, 4), LRN(), Pool(3, 2), Conv(256, 5, 1, 2), LRN(), Pool(3, 2),
           Conv(384, 3, 1, 1), Conv(384, 3, 1, 1), Conv(256, 3, 1, 1), Pool(3, 2)]
CNN_F = [Conv(64, 11, 4), LRN(), Pool(3, 2), Conv(256, 5, 1, 2), LRN(), Pool(3, 2),
         Conv(256, 3, 1, 1), Conv(256, 3, 1, 1), Conv(256, 3, 1, 1), Pool(3, 2)]
CNN_M = [Conv(96, 7, 2), LRN(), Pool(3, 2), Conv(256, 5, 2, 1), LRN(), Pool(3, 2),
         Conv(512, 3, 1, 1), Conv(512, 3, 1, 1), Conv(512, 3, 1, 1), Pool(3, 2)]
CNN_S = [Conv(96, 7, 2), LRN(), Pool(3, 3), Conv(256, 5, 1, 1), Pool(2, 2),
         Conv(512, 3, 1, 1), Conv(512, 3, 1, 1), Conv(512, 3, 1, 1), Pool(3, 3)]
CLARIFAI = [Conv(96, 7, 2), LRN(), Pool(3, 2), Conv(256, 5, 2, 1), LRN(), Pool(3, 2),
            Conv(384, 3, 1, 1), Conv(384, 3, 1, 1), Conv(256, 3, 1, 1), Pool(3, 2)]
OVERFEAT_FAST = [Conv(96, 11, 4), Pool(2, 2), Conv(256, 5), Pool(2, 2), Conv(512, 3, 1, 1),
                 Conv(1024, 3, 1, 1), Conv(1024, 3, 1, 1), Pool(2, 2)]
OVERFEAT_ACCURATE = [Conv(96, 7, 2), Pool(3, 3), Conv(256, 7), Pool(2, 2), Conv(512, 3, 1, 1),
                     Conv(512, 3, 1, 1), Conv(1024, 3, 1, 1), Conv(1024, 3, 1, 1), Pool(3, 3)]

# name: (table, final map before fc6, hidden FC widths)
CLASSICS = {
    "alexnet": (ALEXNET, 6, [4096, 4096]),
    "cnn_f": (CNN_F, 6, [4096, 4096]),
    "cnn_m": (CNN_M, 6, [4096, 4096]),
    "cnn_s": (CNN_S, 6, [4096, 4096]),
    "clarifai": (CLARIFAI, 6, [4096, 4096]),
    "overfeat_fast": (OVERFEAT_FAST, 6, [3072, 4096]),
    "overfeat_accurate": (OVERFEAT_ACCURATE, 5, [4096, 4096]),
}


def _classic(table, final, fc):
    def build(num_classes, in_channels, width_mult):
        return Classic(table, final, fc, num_classes, in_channels, width_mult)

    return build


for _name, (_table, _final, _fc) in CLASSICS.items():
    register(_name, input_size=lambda t=_table, f=_final: exact_input_size(t, f))(_classic(_table, _final, _fc))

_TV_WEIGHTS = torchvision.models.AlexNet_Weights.IMAGENET1K_V1


@register("alexnet_torchvision", input_size=lambda: _TV_WEIGHTS.transforms().crop_size[0],
          published=lambda model: _TV_WEIGHTS.get_state_dict(progress=True))
def _alexnet_torchvision(num_classes, in_channels, width_mult):
    return rescale(torchvision.models.alexnet(num_classes=num_classes), width_mult, in_channels)
