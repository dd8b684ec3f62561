"""LeNet-5 (LeCun et al. 1998): 32x32 input, C1 6@5x5, S2 avg 2/2, C3 16@5x5, S4 avg 2/2,
C5 120@5x5 (a 1x1 map), F6 84, output. tanh throughout. C3 is fully connected to S2 (the
paper's partial connection table is a 1998 compute saving, not a property to reproduce).
"""
import torch.nn as nn

from .classic import Classic, Conv, Pool, exact_input_size
from .registry import register

TABLE = [Conv(6, 5), Pool(2, 2, "avg"), Conv(16, 5), Pool(2, 2, "avg"), Conv(120, 5)]
FINAL = 1


def _build(num_classes, in_channels, width_mult):
    return Classic(TABLE, FINAL, [84], num_classes, in_channels, width_mult, act=nn.Tanh, dropout=0.0)


register("lenet5", input_size=lambda: exact_input_size(TABLE, FINAL))(_build)
