"""Width scaling and input channels for networks built by torchvision or timm.

Builders without a width argument (ResNet, GoogLeNet, Inception-v4, ...) are built at
width 1.0 and then every Conv2d / BatchNorm2d / Linear is resized in place, so subclasses
(timm's BatchNormAct2d) and the forward code stay untouched. A channel count c becomes
max(1, round(c * width_mult)), a function of c alone, so two tensors that are added or
concatenated keep matching sizes whenever c * width_mult is an integer (e.g. 1/16 on
networks whose widths are multiples of 16). Grouped convolutions keep gcd(groups, in, out)
groups, depthwise ones stay depthwise. The network's last layer keeps its num_classes.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def _scale(c: int, width_mult: float) -> int:
    return max(1, round(c * width_mult))


def _last_layer(model: nn.Module) -> nn.Module:
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[-1]


def _resize_conv(m: nn.Conv2d, cin: int, cout: int) -> None:
    if m.groups == m.in_channels == m.out_channels and m.groups > 1:  # depthwise
        groups = cin = cout
    else:
        groups = math.gcd(m.groups, cin, cout)
    kw = dict(device=m.weight.device, dtype=m.weight.dtype)
    m.in_channels, m.out_channels, m.groups = cin, cout, groups
    m.weight = nn.Parameter(torch.empty(cout, cin // groups, *m.kernel_size, **kw))
    if m.bias is not None:
        m.bias = nn.Parameter(torch.empty(cout, **kw))
    m.reset_parameters()


def _resize_bn(m: nn.BatchNorm2d, c: int) -> None:
    kw = dict(device=m.running_mean.device, dtype=m.running_mean.dtype)
    m.num_features = c
    if m.affine:
        m.weight = nn.Parameter(torch.empty(c, **kw))
        m.bias = nn.Parameter(torch.empty(c, **kw))
    if m.track_running_stats:
        m.running_mean = torch.zeros(c, **kw)
        m.running_var = torch.ones(c, **kw)
    m.reset_parameters()


def _resize_linear(m: nn.Linear, fin: int, fout: int) -> None:
    kw = dict(device=m.weight.device, dtype=m.weight.dtype)
    m.in_features, m.out_features = fin, fout
    m.weight = nn.Parameter(torch.empty(fout, fin, **kw))
    if m.bias is not None:
        m.bias = nn.Parameter(torch.empty(fout, **kw))
    m.reset_parameters()


def rescale(model: nn.Module, width_mult: float, in_channels: int = 3, name: str = "") -> nn.Module:
    """Resize every layer in place to `width_mult` and the first conv to `in_channels`."""
    if width_mult == 1.0 and in_channels == 3:
        return model
    last = _last_layer(model)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            cin = in_channels if m is first else _scale(m.in_channels, width_mult)
            cout = m.out_channels if m is last else _scale(m.out_channels, width_mult)
            if (cin, cout) != (m.in_channels, m.out_channels):
                _resize_conv(m, cin, cout)
        elif isinstance(m, nn.BatchNorm2d) and width_mult != 1.0:
            _resize_bn(m, _scale(m.num_features, width_mult))
        elif isinstance(m, nn.Linear) and width_mult != 1.0:
            fout = m.out_features if m is last else _scale(m.out_features, width_mult)
            _resize_linear(m, _scale(m.in_features, width_mult), fout)
    return model


def check_runs(model: nn.Module, in_channels: int, size: int, name: str, width_mult: float) -> None:
    """Shape-check the rescaled network on the meta device (no arithmetic, no memory)."""
    meta = _meta_copy(model)
    try:
        with torch.no_grad():
            meta.eval()(torch.empty(1, in_channels, size, size, device="meta"))
    except RuntimeError as e:
        raise ValueError(
            f"fcnseg.zoo.create({name!r}, width_mult={width_mult}): the rounded channel counts "
            f"no longer match where branches are added or concatenated ({e}). Use a width "
            f"such that every channel count times width_mult is an integer, e.g. 1/16, 1/8, 1/2."
        ) from e


def _meta_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).to("meta")
