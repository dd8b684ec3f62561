"""Max pooling without indices (`fcnseg.convert.pooling._max_pool2d`): the same maxima as max_pool2d."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fcnseg
from fcnseg.convert import pooling
from fcnseg.convert.pooling import _max_pool2d


def _maps(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 13, 11, dtype=dtype)
    x[0, 1, 3, 4] = float("nan")                        # NaN wins, as in max_pool2d
    x[1, 2, 5:7, 5:7] = 0.5                             # ties
    return x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("kernel,dilation", [((2, 2), (1, 1)), ((2, 2), (2, 3)), ((1, 2), (1, 4)),
                                             ((2, 1), (3, 1)), ((3, 3), (2, 2))])
def test_shifted_maxima_equal_max_pool2d_bit_for_bit(dtype, layout, kernel, dilation):
    x = _maps(dtype).contiguous(memory_format=layout)
    with torch.inference_mode():
        got = _max_pool2d(x, kernel, (1, 1), 0, dilation)
        want = F.max_pool2d(x, kernel, (1, 1), 0, dilation)
    assert got.shape == want.shape
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num())
    assert got.is_contiguous(memory_format=layout)


def test_indices_only_where_autograd_needs_them(monkeypatch):
    calls = []
    real = F.max_pool2d
    monkeypatch.setattr(pooling.F, "max_pool2d", lambda *a: calls.append(a[1]) or real(*a))
    x = _maps(torch.float64).requires_grad_(True)
    with torch.no_grad():
        _max_pool2d(x, (2, 2), (1, 1), 0, (1, 1))          # inference: shifted maxima
        _max_pool2d(x, (3, 3), (1, 1), 0, (1, 1))          # a larger window keeps max_pool2d
        _max_pool2d(x, (2, 2), (2, 2), 0, (1, 1))          # and so does a stride
    assert calls == [(3, 3), (2, 2)]
    out = _max_pool2d(x, (2, 2), (1, 1), 0, (1, 1))         # autograd records: max_pool2d and its indices
    out.sum().backward()
    assert calls[-1] == (2, 2) and x.grad is not None


def test_relu_commutes_with_max_pooling_in_float64():
    """The identity behind moving a ReLU from after a max pool into the convolution before it."""
    x = _maps(torch.float64)
    for kernel, dilation in [((2, 2), (1, 1)), ((3, 2), (2, 1))]:
        a = torch.relu(F.max_pool2d(x, kernel, 1, 0, dilation))
        b = F.max_pool2d(torch.relu(x), kernel, 1, 0, dilation)
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def test_dense_max_pools_are_routed_and_stay_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(3, 3, 2), nn.ReLU(),
                        nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(27, 2)).double().eval()
    dense = fcnseg.densify(net, (18, 18))
    assert sum(n.target is _max_pool2d for n in dense.body.graph.nodes) == 2
    x = torch.randn(1, 1, 9, 10, dtype=torch.float64)
    with torch.inference_mode():
        torch.testing.assert_close(dense(x), fcnseg.patchwise(net, x, (18, 18)), rtol=1e-12, atol=1e-12)
