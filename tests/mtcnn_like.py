"""Caffe-ported cascade face-classifier stages (MTCNN-like): ceil-mode pooling with partial last
windows, a flatten in (N, W, H, C) order, several heads. Random weights; the layer sizes of the
public ports."""
import torch
from torch import nn


class RNet(nn.Module):
    """24x24 stage: conv-PReLU-maxpool3/2(ceil) x2, conv2x2, NHWC-style flatten, FC, two heads."""
    patch_size = (24, 24)

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)             # 22 -> 11: partial last window
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)             # 9 -> 4
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.softmax5_1 = nn.Linear(128, 2), nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.softmax5_1(self.dense5_1(x)), self.dense5_2(x)


class ONet(nn.Module):
    """48x48 stage: three ceil-mode pools, NHWC-style flatten, FC with dropout, three heads."""
    patch_size = (48, 48)

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)             # 46 -> 23: partial last window
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)             # 21 -> 10
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)             # 8 -> 4
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.dropout5, self.prelu5 = nn.Linear(1152, 256), nn.Dropout(0.25), nn.PReLU(256)
        self.dense6_1, self.softmax6_1 = nn.Linear(256, 2), nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dropout5(self.dense5(x.view(x.shape[0], -1))))
        return self.softmax6_1(self.dense6_1(x)), self.dense6_2(x), self.dense6_3(x)


class Head(nn.Module):
    """One output of a several-output classifier, as a one-output classifier (the reference)."""

    def __init__(self, model, key):
        super().__init__()
        self.model, self.key = model, key
        self.patch_size = getattr(model, "patch_size", None)

    def forward(self, x):
        return self.model(x)[self.key]


def grads_match(model, x, patch_size, output_stride=1, key=None, tol=1e-9):
    """The gradient of a random weighting of the dense scores (parameters and image) equals the one
    computed patch by patch on the output grid. Returns the largest relative difference."""
    import fcnseg
    s = output_stride
    dense = fcnseg.densify(model, patch_size, output_stride=s)
    x = x.clone().requires_grad_(True)
    out = dense(x)
    out = out if key is None else out[key]
    weights = torch.randn_like(out)
    model.zero_grad()
    (out * weights).sum().backward()
    got = [p.grad.clone() for p in model.parameters() if p.grad is not None] + [x.grad.clone()]
    x.grad = None
    model.zero_grad()
    n, _, h, w = x.shape
    grid = torch.zeros(h, w, dtype=torch.bool)
    grid[::s, ::s] = True
    idx = grid.nonzero()
    ref_model = model if key is None else Head(model, key)
    crops = fcnseg.crop_patches(x, idx, patch_size)                    # (N*M, C, P, Q), image-major
    scores = ref_model(crops).reshape(n, len(idx), -1)
    ref_w = weights[:, :, idx[:, 0] // s, idx[:, 1] // s].transpose(1, 2)
    (scores * ref_w).sum().backward()
    want = [p.grad.clone() for p in model.parameters() if p.grad is not None] + [x.grad.clone()]
    assert len(got) == len(want)
    worst = 0.0
    for a, b in zip(got, want):
        err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
        worst = max(worst, err)
    assert worst <= tol, f"dense gradient differs from patch-by-patch: {worst:.3g}"
    return worst
