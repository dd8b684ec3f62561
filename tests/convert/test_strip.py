"""strip_padding: the same classifier without internal padding, exact once densified."""
import torch
import torch.nn.functional as F
from torch import nn

import fcnseg

from helpers import check_dense

K = 7


class TinyResNet(nn.Module):
    """Padded convs, a strided residual block with a 1x1 downsample, global average pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(3, 2, padding=1)
        self.c1 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.down = nn.Conv2d(4, 6, 1, stride=2)
        self.fc = nn.Linear(6, K)

    def forward(self, x):
        x = self.pool(F.relu(self.stem(x)))
        x = F.relu(self.c2(F.relu(self.c1(x))) + self.down(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TinyInception(nn.Module):
    """Branches of 1x1, 3x3, 5x5 and a padded stride-1 max pool, concatenated."""

    def __init__(self):
        super().__init__()
        self.b1 = nn.Conv2d(3, 2, 1)
        self.b3 = nn.Conv2d(3, 2, 3, padding=1)
        self.b5 = nn.Conv2d(3, 2, 5, padding=2)
        self.bp = nn.MaxPool2d(3, 1, padding=1, ceil_mode=True)
        self.head = nn.Conv2d(9, K, 3)

    def forward(self, x):
        y = torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)
        return self.head(y).mean((2, 3))


def test_resnet_block_exact_after_strip():
    model = TinyResNet().double().eval()
    valid, patch = fcnseg.strip_padding(model)
    assert model.stem.padding == (1, 1)                       # the original is untouched
    assert {id(p) for p in valid.parameters()} == {id(p) for p in model.parameters()}
    # smallest patch: one pixel less and the network no longer runs
    assert patch == valid.patch_size
    try:
        fcnseg.densify(valid, (patch[0] - 1, patch[1] - 1))
        raise AssertionError("a smaller patch must fail")
    except fcnseg.PatchSizeError:
        pass
    x = torch.randn(1, 3, 21, 18, dtype=torch.float64)
    stride = fcnseg.geometry_of(valid).total_stride[0]
    assert stride == 8
    check_dense(valid, x, output_stride=stride)
    check_dense(valid, x, output_stride=2)


def test_inception_concat_exact_after_strip():
    model = TinyInception().double().eval()
    valid, patch = fcnseg.strip_padding(model)
    assert patch == (7, 7)                                     # 5x5 branch then 3x3 head
    check_dense(valid, torch.randn(2, 3, 9, 8, dtype=torch.float64))


def test_patch_size_survives_deepcopy():
    import copy
    valid, patch = fcnseg.strip_padding(TinyInception())
    assert copy.deepcopy(valid).patch_size == patch


def test_gradients_reach_the_original():
    model = TinyResNet().double()
    valid, _ = fcnseg.strip_padding(model)
    fcnseg.densify(valid)(torch.randn(1, 3, 9, 9, dtype=torch.float64)).sum().backward()
    assert model.c2.weight.grad is not None and model.c2.weight.grad.abs().sum() > 0
