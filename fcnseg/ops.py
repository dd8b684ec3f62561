"""Small exact operations the dense network needs and PyTorch does not offer.

Every function here is registered with torch.fx as a leaf, so that a model which calls
them (e.g. one returned by `strip_padding`) can be traced again without tracing into them.
"""
from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F

PAD_MODES = ("constant", "reflect", "replicate")


def pad_amounts(patch_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """F.pad order (left, right, top, bottom) that centres a P x Q patch on every pixel."""
    p, q = patch_size
    return ((q - 1) // 2, q // 2, (p - 1) // 2, p // 2)


def pad_image(x: torch.Tensor, patch_size: tuple[int, int], mode: str = "constant", value: float = 0.0) -> torch.Tensor:
    """Pad an image batch (N, C, H, W) once so that every pixel has a full patch around it."""
    if mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {mode!r}")
    pads = pad_amounts(patch_size)
    if not any(pads):
        return x
    if mode == "reflect":
        h, w = x.shape[-2:]
        if max(pads[2:]) < h and max(pads[:2]) < w:
            return F.pad(x, pads, mode="reflect")
        # pads wider than the image (deep nets, small images): reflect again and again, as np.pad does
        rows = reflect_index(torch.arange(-pads[2], h + pads[3], device=x.device), h)
        cols = reflect_index(torch.arange(-pads[0], w + pads[1], device=x.device), w)
        return x[..., rows[:, None], cols[None, :]]
    if mode == "replicate":
        return F.pad(x, pads, mode="replicate")
    return F.pad(x, pads, mode="constant", value=value)


def reflect_index(i: torch.Tensor, n: int) -> torch.Tensor:
    """Indices into a length-n axis for positions i reflected at both ends (edge not repeated)."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i < n, i, period - i)


def avg_pool2d_dilated(x, kernel_size, stride=1, dilation=1, divisor: int | None = None,
                       channels: int | None = None):
    """Exact average pooling with a dilated window: a depthwise convolution with a ones kernel.

    nn.AvgPool2d has no dilation argument; a depthwise convolution computes the same window sums
    (ONNX exports it without needing AveragePool's opset-19 dilations). Sum, then divide, like
    avg_pool2d does, so the result differs from the reference only by summation order.
    """
    kh, kw = as_pair(kernel_size)
    # a channel count fixed at conversion time keeps the kernel a constant for ONNX / TorchScript
    c = channels if channels is not None else x.shape[1]
    ones = torch.ones(c, 1, kh, kw, dtype=x.dtype, device=x.device)
    summed = F.conv2d(x, ones, None, as_pair(stride), 0, as_pair(dilation), c)
    return summed / (divisor if divisor else kh * kw)


def crop_to_smallest(x: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
    """Centre-crop x to the smallest spatial size among x and others.

    Inserted by strip_padding where a residual addition or a concatenation meets branches that
    shrank by different amounts once their padding was removed (the U-Net crop).
    """
    h = min(t.shape[-2] for t in (x, *others))
    w = min(t.shape[-1] for t in (x, *others))
    top = (x.shape[-2] - h) // 2
    left = (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


def trim_to_smallest(x: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
    """Keep the top-left part of x that every operand of a dense merge has.

    In the dense network every map is aligned at its top-left corner; rows beyond the shortest
    operand belong to no output pixel, so they are dropped, never shifted.
    """
    h = min(t.shape[-2] for t in (x, *others))
    w = min(t.shape[-1] for t in (x, *others))
    return x[..., :h, :w]


def reshape_keep_spatial(x: torch.Tensor, inner: tuple[int, ...]) -> torch.Tensor:
    """Reshape the channel dimensions of (N, *channels, H, W), keeping N, H and W."""
    return x.reshape(x.shape[0], *inner, x.shape[-2], x.shape[-1])


def gather_patches(dense: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor, size, rate) -> torch.Tensor:
    """Per-patch features (N*M, C, h, w) from a dense map (N, C, H, W): patch k reads rows
    iy[k] + a*rate[0], a < h, and columns ix[k] + b*rate[1], b < w (image-major order)."""
    h, w = size
    rows = iy[:, None] + torch.arange(h, device=dense.device) * rate[0]       # (M, h)
    cols = ix[:, None] + torch.arange(w, device=dense.device) * rate[1]       # (M, w)
    out = dense[:, :, rows[:, :, None], cols[:, None, :]]                     # (N, C, M, h, w)
    n, c, m = out.shape[:3]
    return out.permute(0, 2, 1, 3, 4).reshape(n * m, c, h, w)


def as_pair(v) -> tuple[int, int]:
    """(v, v) for an int, (a, b) for a pair; a 1-element sequence (as PyTorch layers store
    some sizes) counts as (a, a)."""
    if isinstance(v, (tuple, list, torch.Size)):
        if len(v) == 1:
            return (int(v[0]), int(v[0]))
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair (P, Q), got {v!r}")
        return (int(v[0]), int(v[1]))
    return (int(v), int(v))


for _fn in (avg_pool2d_dilated, crop_to_smallest, trim_to_smallest, reshape_keep_spatial):
    torch.fx.wrap(_fn.__name__)

LEAF_FUNCTIONS = (avg_pool2d_dilated, crop_to_smallest, trim_to_smallest, reshape_keep_spatial)
