"""A dense step and a patch step on the same pixels are the same optimisation step of the
classifier (float64, every parameter; docs/algorithm.md, "Backward propagation and training")."""
import copy

import pytest
import torch

import fcnseg
import fcnseg.zoo
import fcnseg.zoo.patchnets  # noqa: F401
from fcnseg.train.losses import PixelLoss
from fcnseg.train.sampling import gather_targets, sample_pixels
from fcnseg.train.step import sampled_logits


@pytest.mark.parametrize("stride,pad,loss", [
    (1, {"pad_mode": "constant", "pad_value": 0.3}, {"name": "ce", "class_weights": [0.5, 1, 2]}),
    (2, {"pad_mode": "replicate", "pad_value": 0.0}, {"name": "ce"}),
    (1, {"pad_mode": "constant", "pad_value": 0.0}, {"name": "dice"}),
])
def test_dense_step_equals_patch_step(stride, pad, loss):
    torch.manual_seed(0)
    model = fcnseg.zoo.create("patchnet", 3, in_channels=1, width_mult=0.25).double()
    x = torch.randn(2, 1, 15, 18, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 15, 18))
    y[0, :3] = 255
    pixels = sample_pixels(y, 0.3, balance=True, stride=stride,
                           generator=torch.Generator().manual_seed(1))
    target = gather_targets(y, pixels)
    loss_fn = PixelLoss(num_classes=3, **loss)
    ps = model.patch_size  # (deep copies of the fx module do not carry the attribute)
    before = copy.deepcopy(model)
    nets = {}
    for mode in ("dense", "patch"):
        m = copy.deepcopy(model)
        net = fcnseg.densify(m, ps, output_stride=stride, **pad) if mode == "dense" else m
        opt = torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9)
        logits = sampled_logits(mode, net, x, pixels, patch_size=ps,
                                stride=stride, **pad)
        assert logits.shape == (len(target), 3)
        loss_fn(logits, target).backward()
        opt.step()
        nets[mode] = m
    moved = 0.0
    for (name, pd), pp, p0 in zip(nets["dense"].named_parameters(),
                                  nets["patch"].parameters(), before.parameters()):
        torch.testing.assert_close(pd, pp, rtol=1e-10, atol=1e-12, msg=name)
        moved = max(moved, (pd - p0).abs().max().item())
    assert moved > 1e-3  # the step did something, so equality is not trivial
