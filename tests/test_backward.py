"""Training densely with a masked per-pixel loss == training patch by patch on the same pixels."""
import pytest
import torch
import torch.nn.functional as F

import fcnseg

from helpers import K, ResidualConcat, alexnet_like


def _grads(model):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def dense_grads(model, x, labels, mask, patch):
    model.zero_grad()
    dense = fcnseg.densify(model, patch, pad_mode="replicate")
    ce = F.cross_entropy(dense(x), labels, reduction="none")        # (N, H, W): the error map
    (ce * mask).sum().backward()
    return _grads(model)


def patch_grads(model, x, labels, mask, patch):
    model.zero_grad()
    n = x.shape[0]
    loss = torch.zeros((), dtype=x.dtype)
    for b in range(n):
        idx = mask[b].nonzero()
        if len(idx):
            crops = fcnseg.crop_patches(x[b : b + 1], idx, patch, pad_mode="replicate")
            scores = model(crops).reshape(len(idx), -1)
            loss = loss + F.cross_entropy(scores, labels[b, idx[:, 0], idx[:, 1]], reduction="sum")
    if loss.requires_grad:
        loss.backward()
    return _grads(model)


@pytest.mark.parametrize("density", [0.0, 0.05, 1.0])
@pytest.mark.parametrize("net,patch", [(alexnet_like, 83), (ResidualConcat, 14)])
def test_masked_dense_gradient_equals_patch_gradient(net, patch, density):
    model = net().double().eval()   # eval: BatchNorm1d uses its running statistics in both methods
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64)
    labels = torch.randint(0, K, (2, 11, 9))
    mask = torch.rand(2, 11, 9) < density
    if density > 0:
        mask[0, 0, 0] = mask[1, -1, -1] = True                     # corners, where padding matters
    gd = dense_grads(model, x, labels, mask.double(), patch)
    gp = patch_grads(model, x, labels, mask, patch)
    for (name, _), a, b in zip(model.named_parameters(), gd, gp):
        scale = b.abs().max().clamp_min(1e-30)
        assert ((a - b).abs().max() / scale) <= 1e-9 or (a - b).abs().max() <= 1e-13, name
    if density == 0:
        assert all(g.abs().max() == 0 for g in gd)
