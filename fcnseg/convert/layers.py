"""What each traced node does, in the terms the conversion needs.

`describe(gm, node)` reads a torch.fx node (module call, functional call or method call) and
returns a `Layer`: its kind and, for spatial layers, kernel, stride, dilation and padding.
Every supported construct is listed here and nowhere else.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops import as_pair as _pair

# Modules that act on each position (and, for norms, each channel) independently.
POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.PReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Identity, nn.Dropout, nn.AlphaDropout, nn.Dropout2d, nn.LocalResponseNorm,
    nn.BatchNorm1d, nn.BatchNorm2d,
)
# Modules whose parameters are per feature: on a flattened C*h*w vector they are per position.
PER_FEATURE_MODULES = (nn.BatchNorm1d, nn.PReLU)
# Modules whose training-mode behaviour mixes positions (checked at run time).
TRAIN_MODE_UNSAFE = (nn.modules.batchnorm._BatchNorm, nn.Dropout2d)

POINTWISE_FUNCTIONS = {
    F.relu, F.relu_, F.relu6, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh,
    F.leaky_relu, F.elu, F.selu, F.celu, F.softplus, F.prelu, F.dropout, F.alpha_dropout,
    F.local_response_norm, F.sigmoid, F.tanh, torch.relu, torch.relu_, torch.sigmoid, torch.tanh,
    torch.clamp, torch.clip, torch.exp, torch.log, torch.abs, torch.neg, torch.sqrt, torch.square,
}
POINTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "contiguous",
    "clone", "exp", "log", "abs", "neg", "sqrt", "square", "float", "double", "half", "to", "type_as",
}
MERGE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div, torch.maximum,
    torch.minimum,
}
MERGE_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
SHAPE_FUNCTIONS = {operator.floordiv, operator.mul, operator.add, operator.sub, getattr, operator.getitem}
SOFTMAX_FUNCTIONS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}
RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze"}


# Every kind `describe` returns. Each has a conversion rule (fcnseg.convert.rules.RULES) except
# those in KINDS_WITHOUT_RULE: shape arithmetic is evaluated by the converter itself when its value
# is not a tensor (and refused when it is), and unsupported layers are refused with their reason.
LAYER_KINDS = ("conv", "pool", "adaptive", "global", "linear", "reshape", "crop", "merge", "cat",
               "pointwise", "softmax", "shape", "chunk", "transpose", "getitem", "unsupported")
KINDS_WITHOUT_RULE = ("shape", "unsupported")


@dataclass
class Layer:
    kind: str                      # one of LAYER_KINDS
    name: str                      # qualified module name or node name, for messages
    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    dilation: tuple = (1, 1)
    padding: tuple = (0, 0)
    ceil_mode: bool = False
    pool: str = ""                 # "max" or "avg"
    divisor: int | None = None
    out_size: tuple | None = None  # adaptive pooling
    groups: int = 1
    weight: object = None          # node or attribute path of conv / linear weights
    bias: object = None
    module: nn.Module | None = None
    dim: object = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in LAYER_KINDS:
            raise AssertionError(f"layer kind {self.kind!r} is not in LAYER_KINDS; add it there and give it a rule")


def _arg(node, i, name, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _fn_name(target) -> str:
    return getattr(target, "__name__", str(target))


def describe(gm: torch.fx.GraphModule, node: torch.fx.Node) -> Layer:
    if node.op == "call_module":
        return _describe_module(gm.get_submodule(node.target), node)
    if node.op == "call_function":
        return _describe_function(node)
    if node.op == "call_method":
        return _describe_method(node)
    raise AssertionError(node.op)


def _describe_module(m: nn.Module, node) -> Layer:
    name = node.target
    if isinstance(m, nn.Conv2d):
        pad = m.padding if not isinstance(m.padding, str) else ("same" if m.padding == "same" else (0, 0))
        if pad == "same":
            pad = tuple(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size))
        return Layer("conv", name, _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation), _pair(pad),
                     groups=m.groups, weight=f"{name}.weight", bias=f"{name}.bias" if m.bias is not None else None,
                     module=m)
    if isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            return Layer("unsupported", name, extra={"why": "MaxPool2d(return_indices=True) is not supported"})
        return Layer("pool", name, _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.dilation),
                     _pair(m.padding), m.ceil_mode, pool="max", module=m)
    if isinstance(m, nn.AvgPool2d):
        return Layer("pool", name, _pair(m.kernel_size), _pair(m.stride or m.kernel_size), (1, 1),
                     _pair(m.padding), m.ceil_mode, pool="avg", divisor=m.divisor_override, module=m,
                     extra={"count_include_pad": m.count_include_pad})
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        pool = "avg" if isinstance(m, nn.AdaptiveAvgPool2d) else "max"
        return Layer("adaptive", name, pool=pool, out_size=m.output_size, module=m)
    if isinstance(m, nn.Linear):
        return Layer("linear", name, weight=f"{name}.weight", bias=f"{name}.bias" if m.bias is not None else None,
                     module=m)
    if isinstance(m, nn.Flatten):
        return Layer("reshape", name, module=m, extra={"start_dim": m.start_dim, "end_dim": m.end_dim})
    if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
        return Layer("softmax", name, module=m, dim=m.dim)
    if isinstance(m, POINTWISE_MODULES):
        return Layer("pointwise", name, module=m)
    why = (f"{type(m).__name__} is not known to fcnseg; only layers that act on each position alone, "
           "convolutions, pooling and linear layers can be converted exactly")
    return Layer("unsupported", name, module=m, extra={"why": why})


def _describe_function(node) -> Layer:
    t, name = node.target, node.name
    fname = _fn_name(t)
    if t in (F.conv2d, torch.conv2d):
        return Layer("conv", name, None, _pair(_arg(node, 3, "stride", 1)), _pair(_arg(node, 5, "dilation", 1)),
                     _pair(_arg(node, 4, "padding", 0)), groups=_arg(node, 6, "groups", 1),
                     weight=_arg(node, 1, "weight"), bias=_arg(node, 2, "bias"))
    if t in (F.max_pool2d, torch.max_pool2d):
        k = _pair(_arg(node, 1, "kernel_size"))
        return Layer("pool", name, k, _pair(_arg(node, 2, "stride") or k), _pair(_arg(node, 4, "dilation", 1)),
                     _pair(_arg(node, 3, "padding", 0)), bool(_arg(node, 5, "ceil_mode", False)), pool="max")
    if t is F.avg_pool2d:
        k = _pair(_arg(node, 1, "kernel_size"))
        return Layer("pool", name, k, _pair(_arg(node, 2, "stride") or k), (1, 1), _pair(_arg(node, 3, "padding", 0)),
                     bool(_arg(node, 4, "ceil_mode", False)), pool="avg", divisor=_arg(node, 6, "divisor_override"))
    if t in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        pool = "max" if t is F.adaptive_max_pool2d else "avg"
        return Layer("adaptive", name, pool=pool, out_size=_arg(node, 1, "output_size"))
    if t in (F.linear, torch._C._nn.linear):
        return Layer("linear", name, weight=_arg(node, 1, "weight"), bias=_arg(node, 2, "bias"))
    if t is torch.flatten:
        return Layer("reshape", name, extra={"start_dim": _arg(node, 1, "start_dim", 0),
                                             "end_dim": _arg(node, 2, "end_dim", -1)})
    if t in (torch.cat, torch.concat):
        return Layer("cat", name, dim=_arg(node, 1, "dim", 0))
    if t in (torch.mean, torch.amax, torch.sum):
        return Layer("global", name, pool="max" if t is torch.amax else "avg", dim=_arg(node, 1, "dim"),
                     divisor=1 if t is torch.sum else None,
                     extra={"keepdim": _arg(node, 2, "keepdim", False)})
    if t in SOFTMAX_FUNCTIONS:
        return Layer("softmax", name, dim=_arg(node, 1, "dim"))
    if t is ops.crop_to_smallest:
        return Layer("crop", name)
    if t in (torch.chunk, torch.split):
        return Layer("chunk", name, dim=_arg(node, 2, "dim", 0))
    if t in (torch.transpose, torch.permute):
        return Layer("transpose", name, extra={"args": node.args[1:]})
    if t is ops.reshape_keep_spatial:
        return Layer("reshape", name)
    if t in MERGE_FUNCTIONS:
        return Layer("merge", name)
    if t is operator.getitem:          # on a tensor (on shapes the converter evaluates it itself)
        return Layer("getitem", name)
    if t in SHAPE_FUNCTIONS:
        return Layer("shape", name)
    if t in (F.batch_norm, torch.batch_norm):
        training = _arg(node, 5, "training", False) if t is F.batch_norm else _arg(node, 5, "training")
        if training:
            return Layer("unsupported", name, extra={"why": "batch_norm with training=True uses statistics of "
                                                     "all positions; call model.eval() before converting"})
        return Layer("pointwise", name)
    if t in POINTWISE_FUNCTIONS or fname == "stochastic_depth":
        # torchvision's stochastic depth keeps or drops a whole residual branch per sample: per
        # position it is a scale, so pointwise (in training it drops per image, not per patch)
        return Layer("pointwise", name)
    return Layer("unsupported", name, extra={"why": f"function {fname} is not known to fcnseg"})


def _describe_method(node) -> Layer:
    m, name = node.target, node.name
    if m in ("size", "dim"):
        return Layer("shape", name)
    if m in RESHAPE_METHODS:
        return Layer("reshape", name)
    if m in ("mean", "amax", "sum"):
        return Layer("global", name, pool="max" if m == "amax" else "avg", dim=_arg(node, 1, "dim"),
                     divisor=1 if m == "sum" else None,
                     extra={"keepdim": _arg(node, 2, "keepdim", False)})
    if m in ("softmax", "log_softmax"):
        return Layer("softmax", name, dim=_arg(node, 1, "dim"))
    if m in ("chunk", "split"):
        return Layer("chunk", name, dim=_arg(node, 2, "dim", 0))
    if m in ("transpose", "permute"):
        return Layer("transpose", name, extra={"args": node.args[1:]})
    if m in MERGE_METHODS:
        return Layer("merge", name)
    if m in POINTWISE_METHODS:
        return Layer("pointwise", name)
    return Layer("unsupported", name, extra={"why": f"tensor method .{m}() is not known to fcnseg"})
