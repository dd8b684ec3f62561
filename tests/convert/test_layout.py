"""Ports that flatten in (N, H, W, C) order: the permute folds into the FC weight, exactly."""
import pytest
import torch
from torch import nn

import fcnseg

from helpers import check_dense, grads_match

K = 5


class PermutedFlatten(nn.Module):
    """conv-pool-conv, then a permute/transpose/reshape of the 2x3 map, flatten, Linear."""

    def __init__(self, reorder):
        super().__init__()
        self.reorder = reorder
        self.conv1, self.pool, self.conv2 = nn.Conv2d(2, 3, 3), nn.MaxPool2d(2), nn.Conv2d(3, 4, 2)
        self.fc = nn.Linear(4 * 2 * 3, 6)
        self.out = nn.Linear(6, K)

    def forward(self, x):
        x = self.conv2(self.pool(self.conv1(x)))       # (N, 4, 2, 3) for a (8, 10) patch
        x = self.reorder(x)
        return self.out(torch.relu(self.fc(x)))


REORDERS = {
    "permute_0231_view": lambda x: x.permute(0, 2, 3, 1).contiguous().view(x.shape[0], -1),
    "permute_0321_view": lambda x: x.permute(0, 3, 2, 1).contiguous().view(x.size(0), -1),
    "transpose_13_flatten": lambda x: torch.flatten(x.transpose(1, 3), 1),
    "permute_tuple_reshape": lambda x: torch.relu(x.permute((0, 2, 3, 1))).reshape(x.shape[0], -1),
    "two_permutes": lambda x: x.permute(0, 2, 3, 1).transpose(1, 2).flatten(1),
    "permute_and_back": lambda x: x.permute(0, 2, 3, 1).permute(0, 3, 1, 2).flatten(1),
}


@pytest.mark.parametrize("name", sorted(REORDERS))
def test_flatten_order_folds_into_the_weight(name):
    model = PermutedFlatten(REORDERS[name]).double().eval()
    check_dense(model, torch.randn(2, 2, 6, 7, dtype=torch.float64), (8, 10))


@pytest.mark.parametrize("name", ["permute_0321_view", "transpose_13_flatten"])
def test_flatten_order_backward_reaches_the_weight(name):
    model = PermutedFlatten(REORDERS[name]).double().eval()
    grads_match(model, torch.randn(1, 2, 5, 6, dtype=torch.float64), (8, 10))
    grads_match(model, torch.randn(1, 2, 5, 6, dtype=torch.float64), (8, 10), output_stride=2)


def test_the_weight_is_read_not_copied():
    model = PermutedFlatten(REORDERS["permute_0321_view"]).double().eval()
    dense = fcnseg.densify(model, (8, 10), optimize=False)
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    before = dense(x)
    with torch.no_grad():
        model.fc.weight.mul_(2.0)                       # the dense net sees the classifier's own tensor
    assert not torch.allclose(dense(x), before)
    check_dense(model, x, (8, 10))


@pytest.mark.parametrize("reorder,match", [
    (lambda x: torch.flatten(nn.functional.conv2d(x.transpose(2, 3), torch.ones(4, 4, 1, 1, dtype=x.dtype)), 1),
     r"layer 'conv2d' reads the output of 'transpose'.*moves the spatial dims"),
    (lambda x: nn.functional.local_response_norm(x.permute(0, 2, 3, 1), 2).flatten(1),
     r"layer 'local_response_norm' reads the output of 'permute'"),
    (lambda x: x.permute(0, 2, 3, 1).reshape(x.shape[0], 6, 4).flatten(1),
     r"reshapes \(1, 2, 3, 4\) to \(1, 6, 4\) after 'permute'"),
    (lambda x: x.permute(1, 0, 2, 3).reshape(x.shape[0], -1), r"moves the batch dim"),
])
def test_spatial_moves_are_refused_by_name(reorder, match):
    model = PermutedFlatten(reorder).double().eval()
    with pytest.raises(fcnseg.UnsupportedLayerError, match=match):
        fcnseg.densify(model, (8, 10))
