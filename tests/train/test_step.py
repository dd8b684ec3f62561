"""A dense step and a patch step on the same pixels are the same optimisation step of the
classifier (float64, every parameter), also when the patch step runs in micro-batches
(docs/algorithm.md, "Backward propagation and training")."""
import copy

import pytest
import torch

import fcnseg
import fcnseg.zoo
import fcnseg.zoo.patchnets  # noqa: F401
from fcnseg.train.losses import PixelLoss
from fcnseg.train.sampling import gather_targets, training_pixels
from fcnseg.train.step import dense_logits, patch_backward, patch_logits


@pytest.mark.parametrize("stride,pad,loss,chunk", [
    (1, {"pad_mode": "constant", "pad_value": 0.3}, {"name": "ce", "class_weights": [0.5, 1, 2]}, None),
    (2, {"pad_mode": "replicate", "pad_value": 0.0}, {"name": "ce"}, 7),
    (1, {"pad_mode": "constant", "pad_value": 0.0}, {"name": "dice"}, 5),
    (1, {"pad_mode": "reflect", "pad_value": 0.0}, {"name": "focal", "gamma": 2.0}, 11),
])
def test_dense_step_equals_patch_step(stride, pad, loss, chunk):
    torch.manual_seed(0)
    model = fcnseg.zoo.create("patchnet", 3, in_channels=1, width_mult=0.25).double()
    x = torch.randn(2, 1, 15, 18, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 15, 18))
    y[0, :3] = 255
    pixels = training_pixels(y, 0.3, balance=True, stride=stride,
                           generator=torch.Generator().manual_seed(1))
    target = gather_targets(y, pixels)
    m_total = len(target)
    assert chunk is None or m_total > 2 * chunk  # several micro-batches, a ragged last one
    loss_fn = PixelLoss(num_classes=3, **loss)
    ps = model.patch_size  # (deep copies of the fx module do not carry the attribute)
    before = copy.deepcopy(model)
    nets = {}
    for method in ("dense", "patch"):
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9)
        if method == "dense":
            net = fcnseg.densify(m, ps, output_stride=stride, **pad)
            logits = dense_logits(net, x, pixels, stride)
            assert logits.shape == (m_total, 3)
            dense_loss = loss_fn(logits, target)
            dense_loss.backward()
        else:
            patch_loss = patch_backward(m, x, pixels, ps, lambda lg: loss_fn(lg, target),
                                        chunk=chunk or m_total, **pad)
            torch.testing.assert_close(patch_loss, dense_loss.detach(), rtol=1e-12, atol=1e-12)
        opt.step()
        nets[method] = m
    moved = 0.0
    for (name, pd), pp, p0 in zip(nets["dense"].named_parameters(),
                                  nets["patch"].parameters(), before.parameters()):
        torch.testing.assert_close(pd, pp, rtol=1e-10, atol=1e-12, msg=name)
        moved = max(moved, (pd - p0).abs().max().item())
    assert moved > 1e-3  # the step did something, so equality is not trivial


def test_patch_logits_in_micro_batches_equal_dense_scores():
    torch.manual_seed(1)
    model = fcnseg.zoo.create("patchnet", 4, in_channels=2, width_mult=0.25).double().eval()
    x = torch.randn(3, 2, 9, 11, dtype=torch.float64)
    y = torch.randint(0, 4, (3, 9, 11))
    pixels = training_pixels(y, 0.5, generator=torch.Generator().manual_seed(2))
    dense = dense_logits(fcnseg.densify(model, pad_mode="replicate"), x, pixels)
    chunked = patch_logits(model, x, pixels, model.patch_size, pad_mode="replicate", chunk=4)
    torch.testing.assert_close(chunked, dense, rtol=1e-12, atol=1e-12)
