"""Ceil-mode pooling with partial last windows: exact against patch-by-patch, forward and backward."""
import pytest
import torch
from torch import nn

import fcnseg

from helpers import Head, ONet, RNet, check_dense, grads_match

K = 5


def f64(m):
    return m.double().eval()


def partial(n, k, s, dilation=1):
    """Whether a ceil-mode pool on an n-long axis has a partial last window."""
    floor = (n - dilation * (k - 1) - 1) // s + 1
    ceil = -(-(n - dilation * (k - 1) - 1) // s) + 1
    if (ceil - 1) * s >= n:
        ceil -= 1
    return ceil > floor


class Stacked(nn.Module):
    """Two partial pools with a convolution between (its last taps read the first pool's edge
    maps), a residual branch, then a global mean over a map that still has edge maps."""

    def __init__(self, pool):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3)
        self.pool1 = pool(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(3, 4, 2)
        self.skip = nn.Conv2d(4, 4, 1)
        self.pool2 = pool(3, 2, ceil_mode=True)
        self.head = nn.Linear(4, K)

    def forward(self, x):
        x = torch.tanh(self.conv2(self.pool1(self.conv1(x))))
        x = self.pool2(x + self.skip(x))
        return self.head(x.mean((2, 3)))


def nets():
    def max3(**kw):
        return nn.MaxPool2d(3, 2, ceil_mode=True, **kw)
    return {
        # patch 10: conv 8 -> pool 4 (partial on both axes), FC over 3x3
        "both_axes": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3), max3(), nn.Conv2d(3, 4, 2), nn.Flatten(),
                                            nn.Linear(36, K)), (10, 10)),
        # patch (10, 9): rows 8 -> 4 partial, cols 7 -> 3 exact
        "one_axis": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3), max3(), nn.Conv2d(3, 4, 2), nn.Flatten(),
                                           nn.Linear(24, K)), (10, 9)),
        # two pools in a row: 10 -> 5 -> 3, the second's last window starts on the first's edge
        "pool_on_pool": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3), max3(), nn.MaxPool2d(2, 2, ceil_mode=True),
                                               nn.Conv2d(3, K, 3)), (12, 12)),
        "stacked_max": (lambda: Stacked(nn.MaxPool2d), (20, 20)),
        "stacked_avg": (lambda: Stacked(nn.AvgPool2d), (20, 20)),
        # strided convolution first: 17 -> 8 -> pool 4 (partial)
        "after_strided_conv": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, stride=2), nn.ReLU(), max3(),
                                                     nn.Conv2d(3, 4, 2, stride=2), nn.Flatten(), nn.Linear(16, K)),
                               (17, 17)),
        # a dilated pool whose last window has 2 of 3 taps inside: 10 -> 4
        "dilated_max": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.MaxPool2d(3, 2, dilation=2, ceil_mode=True),
                                              nn.Conv2d(3, K, 4)), (12, 12)),
        # average pooling: the partial window's divisor, padding excluded or not, and an override
        "avg_include_pad": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.AvgPool2d(3, 2, ceil_mode=True),
                                                  nn.Conv2d(3, K, 4)), (10, 10)),
        "avg_exclude_pad": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.AvgPool2d(3, 2, ceil_mode=True,
                                                                                   count_include_pad=False),
                                                  nn.Conv2d(3, K, 4)), (10, 10)),
        "avg_divisor": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.AvgPool2d(3, 2, ceil_mode=True,
                                                                               divisor_override=4),
                                              nn.Conv2d(3, K, 4)), (10, 10)),
    }


NETS = nets()


def test_the_nets_have_partial_windows():
    # the cases exercise what they claim (the first pool of each has a partial last window)
    assert partial(8, 3, 2) and not partial(7, 3, 2) and partial(5, 2, 2) and partial(18, 3, 2)
    assert partial(8, 3, 2) and partial(10, 3, 2, dilation=2)


@pytest.mark.parametrize("name", sorted(NETS))
def test_partial_windows_are_exact(name):
    make, patch = NETS[name]
    model = f64(make())
    check_dense(model, torch.randn(2, 2, 9, 11, dtype=torch.float64), patch)


@pytest.mark.parametrize("name,s", [("both_axes", 2), ("stacked_max", 2), ("stacked_avg", 4),
                                    ("after_strided_conv", 4), ("after_strided_conv", 8), ("pool_on_pool", 4)])
def test_partial_windows_at_output_stride(name, s):
    make, patch = NETS[name]
    check_dense(f64(make()), torch.randn(1, 2, 13, 10, dtype=torch.float64), patch, output_stride=s)


@pytest.mark.parametrize("name,s", [("stacked_max", 1), ("stacked_avg", 1), ("one_axis", 1),
                                    ("after_strided_conv", 2), ("dilated_max", 1)])
def test_partial_windows_backward(name, s):
    make, patch = NETS[name]
    grads_match(f64(make()), torch.randn(2, 2, 7, 8, dtype=torch.float64), patch, output_stride=s)


def test_image_no_larger_than_one_window():
    # the padded image is exactly one patch for a 1x1 image: only edge windows exist
    make, patch = NETS["stacked_max"]
    check_dense(f64(make()), torch.randn(1, 2, 1, 1, dtype=torch.float64), patch)


def test_edge_maps_cost_a_small_multiple():
    # sub-window terms shared between map classes: a 2x2 conv after a pool partial on both axes
    # computes (2+1)^2 = 9 taps per position instead of 4, not 4 * 4
    model = f64(NETS["stacked_max"][0]())
    layers = {layer.name: layer for layer in fcnseg.geometry_of(model, 20).layers}
    plain = 2 * 3 * 4 * 2 * 2                                   # conv2: 2x2 taps, 3 -> 4 channels
    assert layers["conv2"].flops_dense == plain * 9 / 4


@pytest.mark.parametrize("net", [RNet, ONet])
def test_mtcnn_like_stages_are_exact_per_head(net):
    model = f64(net())
    dense = fcnseg.densify(model)
    x = torch.randn(1, 3, 5, 6, dtype=torch.float64)
    out = dense(x)
    assert isinstance(out, tuple) and [o.shape[1] for o in out] == ([2, 4] if net is RNet else [2, 4, 10])
    for head in range(len(out)):
        check_dense(Head(model, head), x)


def test_mtcnn_like_backward():
    model = f64(RNet())
    for head in (0, 1):
        grads_match(model, torch.randn(1, 3, 4, 5, dtype=torch.float64), 24, key=head)


def test_partial_windows_before_a_per_patch_gate_refuse():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool, self.head = nn.Conv2d(2, 4, 3), nn.MaxPool2d(3, 2, ceil_mode=True), nn.Conv2d(4, K, 4)

        def forward(self, x):
            f = self.pool(self.conv(x))                       # 8 -> 4, partial
            return self.head(f * f.mean((2, 3), keepdim=True))
    with pytest.raises(fcnseg.UnsupportedLayerError, match=r"layer 'mul'.*partial ceil-mode windows \('pool'\)"):
        fcnseg.densify(Gated().double(), 10)
