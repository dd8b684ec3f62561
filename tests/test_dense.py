"""densify == patch-by-patch at every pixel, in float64, for every supported construct."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fcnseg

from helpers import K, ResidualConcat, alexnet_like, check_dense, f64, lecture_net


def lenet5(k=K):
    # LeNet-5 as in the lecture notes: tanh, average pooling, three FC layers, 32x32 input
    return nn.Sequential(nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.Tanh(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Tanh(), nn.Linear(120, 84),
                         nn.Tanh(), nn.Linear(84, k))


def test_lecture_worked_example():
    model = f64(lecture_net())
    dense = fcnseg.densify(model, 15)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    assert dense.pad(x).shape[-2:] == (19, 19)
    assert dense(x).shape == (2, K, 5, 5)
    # top-left output == classifier on the top-left 15x15 patch of the padded image
    top_left = model(dense.pad(x)[:, :, :15, :15]).reshape(2, K)
    assert torch.allclose(dense(x)[:, :, 0, 0], top_left, rtol=1e-12, atol=1e-14)
    check_dense(model, x, 15)


def test_lenet5_gray():
    model = f64(lenet5())
    check_dense(model, torch.randn(1, 1, 13, 11, dtype=torch.float64), 32)


def test_alexnet_like_with_lrn_and_groups():
    model = f64(alexnet_like())
    p = fcnseg.find_patch_size(model)
    # the head wants a 2x2 map: pool 3/2 needs 5, conv 5 needs 9, pool 3/2 needs 19, conv 11/4 needs 83
    assert p == (83, 83)
    check_dense(model, torch.randn(2, 3, 9, 10, dtype=torch.float64), p)


@pytest.mark.parametrize("pad_mode,pad_value", [("constant", 0.0), ("constant", -1.5), ("reflect", 0.0),
                                                ("replicate", 0.0)])
def test_pad_modes(pad_mode, pad_value):
    model = f64(lecture_net())
    check_dense(model, torch.randn(1, 3, 17, 16, dtype=torch.float64), 15, pad_mode=pad_mode, pad_value=pad_value)


@pytest.mark.parametrize("p", [(14, 10), (15, 10)])
def test_pool_stride_differs_from_kernel_and_even_sizes(p):
    # even kernels, pools 3/2 and 2/3, even and non-square patches (15 rows: floor pooling drops one):
    # alignment must be computed, not assumed
    model = f64(nn.Sequential(nn.Conv2d(2, 4, (2, 4)), nn.MaxPool2d(3, 2), nn.Conv2d(4, 4, 2), nn.AvgPool2d(2, 3),
                              nn.Conv2d(4, K, (2, 1))))
    assert model(torch.zeros(1, 2, *p, dtype=torch.float64)).shape[-2:] == (1, 1)
    check_dense(model, torch.randn(1, 2, 9, 14, dtype=torch.float64), p)


def test_ceil_mode_when_windows_fit():
    model = f64(nn.Sequential(nn.Conv2d(1, 3, 3), nn.MaxPool2d(3, 2, ceil_mode=True), nn.Conv2d(3, 4, 3),
                              nn.AvgPool2d(2, 2, ceil_mode=True), nn.Flatten(), nn.Linear(4 * 2 * 2, K)))
    # head wants 2x2: avg 2/2 needs 4, conv 3 needs 6, max 3/2 needs 13, conv 3 needs 15
    check_dense(model, torch.randn(1, 1, 8, 7, dtype=torch.float64), 15)


@pytest.mark.parametrize("pad_mode", ["constant", "reflect", "replicate"])
def test_image_smaller_than_patch_and_batch(pad_mode):
    # reflect padding wider than the image reflects again, as np.pad does
    model = f64(lecture_net())
    check_dense(model, torch.randn(3, 3, 4, 2, dtype=torch.float64), 15, pad_mode=pad_mode)


def test_dilated_grouped_bn_dropout_in_eval():
    model = f64(nn.Sequential(nn.Conv2d(4, 8, 3, dilation=2), nn.BatchNorm2d(8), nn.PReLU(8), nn.Dropout2d(),
                              nn.Conv2d(8, 8, 3, groups=4, stride=2), nn.GELU(), nn.MaxPool2d(2, dilation=2),
                              nn.Conv2d(8, K, 2), nn.Flatten(), nn.Softmax(dim=-1)))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)
    p = fcnseg.find_patch_size(model, 4)
    check_dense(model, torch.randn(2, 4, 7, 8, dtype=torch.float64), p)


def test_custom_forward_residual_concat():
    model = f64(ResidualConcat())
    model.bn1d.running_mean.uniform_(-1, 1)
    check_dense(model, torch.randn(2, 3, 6, 9, dtype=torch.float64), 14)


class GlobalPoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 5, 3, stride=2)
        self.c2 = nn.Conv2d(5, 6, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, K)

    def forward(self, x):
        y = self.c2(F.relu(self.c1(x)))
        z = torch.flatten(self.pool(y), 1) + y.amax(dim=(2, 3))
        return self.fc(z) + y.mean((-2, -1)).sum(1, keepdim=True)


def test_global_pooling_heads_and_dilated_avg_pool():
    model = f64(GlobalPoolNet())
    check_dense(model, torch.randn(1, 3, 10, 7, dtype=torch.float64), 13)


def test_adaptive_pool_with_uniform_windows():
    model = f64(nn.Sequential(nn.Conv2d(1, 3, 3), nn.AdaptiveMaxPool2d(3), nn.Flatten(), nn.Linear(27, K)))
    check_dense(model, torch.randn(1, 1, 6, 6, dtype=torch.float64), 11)  # 9 -> 3: windows 3/3


@pytest.mark.parametrize("s", [1, 2, 4, 8, 24])
def test_every_output_stride(s):
    model = f64(nn.Sequential(nn.Conv2d(1, 3, 3, stride=2), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3), nn.MaxPool2d(2),
                              nn.Conv2d(4, 4, 2), nn.MaxPool2d(3), nn.Conv2d(4, K, 2)))
    p = fcnseg.find_patch_size(model, 1)
    dense = fcnseg.densify(model, p)
    assert dense.geometry.total_stride == (24, 24)
    check_dense(model, torch.randn(1, 1, 50, 27, dtype=torch.float64), p, output_stride=s)


def test_float32_tolerance():
    model = alexnet_like().eval()
    check_dense(model, torch.randn(1, 3, 8, 8), 83, tol=1e-4)


def test_shares_parameters_and_follows_mode():
    model = lecture_net().eval()
    dense = fcnseg.densify(model, 15)
    assert not dense.training and not dense.body.training      # adopts the classifier's mode
    assert {id(p) for p in dense.parameters()} == {id(p) for p in model.parameters()}
    for node in dense.body.graph.nodes:
        if node.op == "call_module":
            assert dense.body.get_submodule(node.target) is model.get_submodule(node.target)
    dense.train()
    assert all(m.training for m in model.modules())
    dense.eval()
    assert not any(m.training for m in model.modules())


def test_trains_the_classifier():
    model = lenet5().double()
    dense = fcnseg.densify(model, 32)
    dense(torch.randn(1, 1, 5, 5, dtype=torch.float64)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_reflect_padding_matches_numpy_for_any_width():
    np = pytest.importorskip("numpy")
    from fcnseg.ops import pad_image
    x = torch.randn(1, 1, 3, 2, dtype=torch.float64)
    for p in [(15, 15), (4, 5), (9, 2)]:
        want = np.pad(x[0, 0].numpy(), (((p[0] - 1) // 2, p[0] // 2), ((p[1] - 1) // 2, p[1] // 2)), mode="reflect")
        assert np.array_equal(pad_image(x, p, "reflect")[0, 0].numpy(), want)


class SqueezeExcite(nn.Module):
    """A squeeze-excitation gate inside the body: each patch scales its own map."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Conv2d(4, 4, 1)
        self.c2 = nn.Conv2d(4, 5, 3)
        self.head = nn.Linear(5, K)

    def forward(self, x):
        y = F.relu(self.conv(x))
        y = y * torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))
        z = self.c2(y)
        return self.head(F.adaptive_avg_pool2d(z + z[:, :1], 1).flatten(1))


@pytest.mark.parametrize("s", [1, 2])
def test_squeeze_excitation_runs_exactly_per_patch(s):
    model = f64(SqueezeExcite())
    dense = fcnseg.densify(model, 11, output_stride=s)
    assert dense.per_patch_tail is not None and sorted(g.hw for g in dense.tail_inputs) == [(1, 1), (5, 5)]
    dense.tail_memory = 4096                       # several tail batches
    check_dense(model, torch.randn(2, 3, 9, 8, dtype=torch.float64), 11, output_stride=s)
