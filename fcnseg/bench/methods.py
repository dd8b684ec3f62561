"""The ways of computing the same per-pixel output that the benchmark compares.

- patch-by-patch: crop every pixel's patch, classify them in batches (fcnseg.patchwise), with
  the classifier in NCHW and in channels_last (the faster of the two is the baseline);
- hand conversion: what a user writes without fcnseg: every stride set to 1, dilation equal
  to the cumulative stride on convolutions and max pools, Linear layers as convolutions, NCHW;
- shift-and-stitch (FCN / OverFeat): the strided fully convolutional network run on every
  shift of the input (s*s shifts for output stride s), outputs interleaved;
- fcnseg.densify: the default (optimised) dense network, and the plain graph (optimize=False).
All of them produce (N, K, H, W) scores equal to patch-by-patch at every pixel.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg import zoo
from fcnseg.dense import densify, freeze_batchnorm, geometry_of
from fcnseg.ops import as_pair, pad_image
from fcnseg.patch import crop_patches

POINTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Dropout, nn.Identity,
             nn.BatchNorm2d, nn.BatchNorm1d, nn.Softmax, nn.LogSoftmax,
             nn.LocalResponseNorm)                    # cross-channel: pointwise in space


# ---- networks -------------------------------------------------------------------------------

def build_network(name: str, width: float) -> tuple[nn.Module, int, str]:
    """(zoo model in eval mode, input channels, where it came from). 'membrane95' is the zoo's
    'membrane_net' (the Ciresan et al. 2012 95x95 patch net; it has no padding to strip)."""
    if name == "membrane95":
        return zoo.spec("membrane_net").build(2, 1, width).eval(), 1, "fcnseg.zoo 'membrane_net'"
    model = zoo.create(name, num_classes=2, in_channels=3, width_mult=width, padding="valid")
    freeze_batchnorm(model)
    return model.eval(), 3, "fcnseg.zoo"


def channels_last_copy(model: nn.Module) -> nn.Module:
    """The patch classifier with NHWC weights (often the faster way to run it patch by patch on CPU)."""
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    nhwc.patch_size = model.patch_size
    return nhwc


def dense_networks(model: nn.Module, output_stride: int = 1) -> dict[str, nn.Module]:
    """{'densify': the default densify network, 'densify_plain': optimize=False}."""
    return {"densify": densify(model, output_stride=output_stride),
            "densify_plain": densify(model, output_stride=output_stride, optimize=False)}


# ---- hand conversion --------------------------------------------------------------------------

class HandConversionError(ValueError):
    pass


def _run_chain(leaves, h):
    """Apply the leaf layers in order, flattening before the first Linear (torch.flatten in forward)."""
    for m in leaves:
        if isinstance(m, nn.Linear) and h.dim() > 2:
            h = h.flatten(1)
        h = m(h)
    return h


def hand_convert(model: nn.Module, patch_size, in_channels: int) -> nn.Sequential:
    """Strides to 1, dilation = cumulative stride, Linear -> conv; only for a plain layer chain.

    Raises HandConversionError where a user could not do it with stock layers (average
    pooling has no dilation argument, branches, padding).
    """
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    p = next(model.parameters())
    x = torch.randn(1, in_channels, *patch_size, dtype=p.dtype, device=p.device)
    with torch.no_grad():
        try:
            same = torch.allclose(_run_chain(leaves, x).reshape(-1), model(x).reshape(-1))
        except RuntimeError:
            same = False
    if not same:
        raise HandConversionError("not a plain chain of layers (branches or functional calls)")
    out, d, h = [], (1, 1), x
    for m in leaves:
        if isinstance(m, nn.Conv2d):
            if (m.padding != "valid" if isinstance(m.padding, str) else any(as_pair(m.padding))) or \
                    m.padding_mode != "zeros":
                raise HandConversionError("padded convolution")
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, 1, 0,
                             tuple(d[i] * m.dilation[i] for i in range(2)), m.groups, m.bias is not None)
            conv.weight, conv.bias = m.weight, m.bias          # shared parameters
            out.append(conv)
            d = tuple(d[i] * m.stride[i] for i in range(2))
        elif isinstance(m, nn.MaxPool2d):
            if any(as_pair(m.padding)) or m.ceil_mode:
                raise HandConversionError("padded or ceil-mode max pooling")
            k, s = as_pair(m.kernel_size), as_pair(m.stride or m.kernel_size)
            out.append(nn.MaxPool2d(k, 1, 0, tuple(d[i] * as_pair(m.dilation)[i] for i in range(2))))
            d = tuple(d[i] * s[i] for i in range(2))
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            if tuple(m(h).shape[-2:]) != tuple(h.shape[-2:]):
                raise HandConversionError("adaptive pooling that pools (nn.AvgPool2d has no dilation)")
        elif isinstance(m, nn.AvgPool2d):
            raise HandConversionError("average pooling (nn.AvgPool2d has no dilation argument)")
        elif isinstance(m, nn.Linear):
            c, hh, ww = tuple(h.shape[1:]) if h.dim() == 4 else (m.in_features, 1, 1)
            conv = nn.Conv2d(c, m.out_features, (hh, ww), 1, 0, d, 1, m.bias is not None)
            # the FC weight reshaped (a view of the same storage), as a user would write it
            conv.weight = nn.Parameter(m.weight.detach().view(m.out_features, c, hh, ww))
            conv.bias = m.bias
            out.append(conv)
        elif isinstance(m, POINTWISE):
            out.append(m)
        elif not isinstance(m, nn.Flatten):
            raise HandConversionError(f"layer {type(m).__name__}")
        if isinstance(m, nn.Flatten):
            continue                                  # keep the map: the next Linear reads its shape
        with torch.no_grad():
            h = m(h.flatten(1) if isinstance(m, nn.Linear) and h.dim() > 2 else h)
            if h.dim() == 2:
                h = h[:, :, None, None]               # keep (N, C, 1, 1) so the next Linear sees a map
    return nn.Sequential(*out)


class HandDense(nn.Module):
    """The user's converted network with the same input padding and output size as fcnseg."""

    def __init__(self, body: nn.Sequential, patch_size):
        super().__init__()
        self.body, self.patch_size = body, tuple(patch_size)

    def forward(self, x):
        p, q = self.patch_size
        xp = F.pad(x, ((q - 1) // 2, q // 2, (p - 1) // 2, p // 2))
        return self.body(xp)[..., : x.shape[-2], : x.shape[-1]]


# ---- shift-and-stitch -------------------------------------------------------------------------

class ShiftAndStitch:
    """The strided FCN on every shift of the padded input, interleaved into a full-resolution map.

    The strided FCN is the classifier with its FC layers as convolutions and all its strides
    kept (fcnseg.densify with output_stride = total stride: no dilation anywhere), with the same
    default optimisations as the dense network, so that the comparison is of methods.
    """

    def __init__(self, model: nn.Module):
        stride = geometry_of(model).total_stride
        self.s = stride
        self.fcn = densify(model, output_stride=stride)

    @property
    def shifts(self) -> list[tuple[int, int]]:
        return [(a, b) for a in range(self.s[0]) for b in range(self.s[1])]

    def run_shifts(self, x, shifts, out=None):
        """Fill out[..., a::s, b::s] for the given shifts; returns out (N, K, H, W)."""
        xp = self.fcn.pad(x)
        h, w = x.shape[-2:]
        for a, b in shifts:
            if a >= h or b >= w:
                continue
            y = self.fcn.forward_valid(xp[..., a:, b:])           # (N, K, ceil((H-a)/s), ...)
            if out is None:
                out = y.new_zeros(x.shape[0], y.shape[1], h, w)
            rows, cols = len(range(a, h, self.s[0])), len(range(b, w, self.s[1]))
            out[..., a :: self.s[0], b :: self.s[1]] = y[..., :rows, :cols]
        return out

    def __call__(self, x):
        return self.run_shifts(x, self.shifts)


# ---- patch-by-patch and training steps ------------------------------------------------------------

PATCH_BATCH_CAP = {"cpu": 256, "cuda": 8192}


def patch_batch_size(patch_size, in_channels, device="cpu", model: nn.Module | None = None) -> int:
    """Patches per batch of the patch-by-patch baseline, a power of two.

    CPU: until a batch of input patches reaches ~32 MB (activations are many times that), at
    most 256 (larger batches are no faster on a few cores). CUDA: as many as fit in the
    device's free-memory budget (fcnseg.runtime.device_memory_budget_mb), from the peak memory
    of one probe batch of ``model``, at most 8192: a small cap would starve a large GPU and
    flatter the dense method."""
    device = torch.device(device)
    per = in_channels * patch_size[0] * patch_size[1] * 4
    if device.type != "cuda" or model is None:
        return int(max(8, min(PATCH_BATCH_CAP["cpu"], 2 ** math.floor(math.log2(max(1, 32 * 2 ** 20 // per))))))
    from fcnseg.runtime import device_memory_budget_mb
    probe = 16
    p = next(model.parameters())
    x = torch.randn(probe, in_channels, *patch_size, device=device, dtype=p.dtype)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        model(x)
    per_patch = max(per, (torch.cuda.max_memory_allocated(device) - base) / probe)
    fit = device_memory_budget_mb(device) * 2 ** 20 / per_patch
    return int(max(probe, min(PATCH_BATCH_CAP["cuda"], 2 ** math.floor(math.log2(max(1.0, fit))))))


def random_pixel_coords(h: int, w: int, n: int, seed: int = 0, stride: int = 1) -> torch.Tensor:
    """(n, 2) distinct random (row, col) image pixels on the output grid of the given stride
    (rows and cols multiples of it): the pixels a dense network of that output stride scores."""
    gh, gw = -(-h // stride), -(-w // stride)
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(gh * gw, generator=g)[: min(n, gh * gw)]
    return torch.stack([flat // gw, flat % gw], 1) * stride


def dense_train_step(dense, model, x, pixels, target):
    """Masked per-pixel loss over `pixels` through the dense network, then backward."""
    out = dense(x)                                                   # (1, K, H, W)
    loss = F.cross_entropy(out[0, :, pixels[:, 0], pixels[:, 1]].T, target, reduction="sum")
    loss.backward()
    model.zero_grad(set_to_none=True)


def patch_train_step(model, x, pixels, target, batch_size):
    """The same loss summed over the same pixels' patches, batch by batch (gradients accumulate)."""
    p = model.patch_size
    xp = pad_image(x, p)
    for i in range(0, len(pixels), batch_size):
        chunk = pixels[i : i + batch_size]
        scores = model(crop_patches(x, chunk, p, padded=xp)).reshape(len(chunk), -1)
        F.cross_entropy(scores, target[i : i + batch_size], reduction="sum").backward()
    model.zero_grad(set_to_none=True)
