"""The optimising rewrite of a dense body: same values, laid out and scheduled for speed.

`fcnseg.densify(model)` applies it by default (`optimize=True`); `optimize=False` keeps the
plain converted graph, `optimize=Optimizations(...)` chooses the parts. What each part does
and why it is exact: docs/algorithm.md, "The optimising rewrite".

- identity windows removed: a 1x1 average/max pool (what a Flatten after an already 1x1
  map or an adaptive pool to the map's own size becomes) is a copy, or a depthwise
  convolution with a ones kernel for the dilated average. Dropping it is exact.
- eval-mode batch norm folded into the convolution before it (one pass over the map fewer).
- channels_last end to end. On CPU, max pooling at stride 1 with dilation is several times
  slower in NCHW than in channels_last (the NHWC kernel vectorises over channels), and
  dilated convolutions run as fast or faster in channels_last. The input is converted once,
  and the output of a convolution on a single-channel map too (see `to_channels_last`).
- optional: a fixed intra-op thread count for the forward pass, and torch.compile of the body
  (inductor; it reassociates sums, so it is exact up to float rounding like everything else).

The rewritten graph reads the classifier's own parameter tensors (no copies), so training
through it trains the classifier.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.fx
import torch.nn.functional as F

from .. import ops
from ..ops import as_pair

CL = torch.channels_last


@dataclass(frozen=True)
class Optimizations:
    """Which exact speed rewrites `fcnseg.densify(..., optimize=...)` applies.

    channels_last: run every map in NHWC (the big CPU win for pooled networks; on CUDA it
        enables the tensor-core NHWC kernels).
    fold_batchnorm: merge each eval-mode BatchNorm2d into the convolution before it
        (recomputed at every call from the live parameters, so training through it stays exact).
    compile: torch.compile the body (the first call compiles, for seconds to minutes; every new
        input shape recompiles unless compile_options enable dynamic shapes).
    threads: intra-op threads during the forward pass (None: PyTorch's current setting).
    compile_options: keyword arguments for torch.compile.
    """
    channels_last: bool = True
    fold_batchnorm: bool = True
    compile: bool = False
    threads: int | None = None
    compile_options: Mapping | None = None

    def __post_init__(self):
        if self.threads is not None and (isinstance(self.threads, bool) or int(self.threads) < 1):
            raise ValueError(f"Optimizations(threads=...) must be a positive count or None, got {self.threads!r}")

    @classmethod
    def resolve(cls, optimize: "bool | Optimizations") -> "Optimizations | None":
        """densify's `optimize` argument -> the options (None: the plain graph)."""
        if isinstance(optimize, cls):
            return optimize
        if optimize is True:
            return cls()
        if optimize is False or optimize is None:
            return None
        raise TypeError(f"optimize must be True, False or fcnseg.Optimizations(...), got {optimize!r}")


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=CL) if x.dim() == 4 else x


torch.fx.wrap("_channels_last")


def _is_identity_window(node: torch.fx.Node) -> bool:
    """A pooling node whose window is one element and whose divisor is 1: output == input."""
    if node.op != "call_function":
        return False
    if node.target is ops.avg_pool2d_dilated:
        kernel = node.args[1] if len(node.args) > 1 else node.kwargs.get("kernel_size")
        stride = node.args[2] if len(node.args) > 2 else node.kwargs.get("stride", 1)
        divisor = node.args[4] if len(node.args) > 4 else node.kwargs.get("divisor")
        return as_pair(kernel) == (1, 1) and as_pair(stride) == (1, 1) and divisor in (None, 1)
    if node.target in (F.max_pool2d, F.avg_pool2d, torch._C._nn.avg_pool2d):
        kernel = node.args[1] if len(node.args) > 1 else node.kwargs.get("kernel_size")
        stride = node.args[2] if len(node.args) > 2 else node.kwargs.get("stride")
        if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
            stride = kernel                                   # PyTorch's default stride
        divisor = node.args[6] if node.target is not F.max_pool2d and len(node.args) > 6 else \
            node.kwargs.get("divisor_override")
        pad = node.args[3] if len(node.args) > 3 else node.kwargs.get("padding", 0)
        return (as_pair(kernel) == (1, 1) and as_pair(stride) == (1, 1) and as_pair(pad) == (0, 0)
                and divisor in (None, 1))
    return False


def drop_identity_windows(gm: torch.fx.GraphModule) -> int:
    """Remove 1x1 stride-1 pooling nodes in place; returns how many were removed."""
    removed = 0
    for node in list(gm.graph.nodes):
        if _is_identity_window(node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed += 1
    return removed


def to_channels_last(gm: torch.fx.GraphModule) -> None:
    """Convert the input to channels_last and keep every convolution's output there.

    A (N, 1, H, W) input or (C, 1, kh, kw) weight is NCHW- and NHWC-contiguous at once, and
    PyTorch then picks NCHW for the convolution's output (and every later layer follows).
    Converting conv outputs costs nothing when they are already NHWC (contiguous() returns
    the tensor itself) and one copy of one map when they are not.
    """
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "placeholder" or (node.op == "call_function" and node.target in (F.conv2d, torch.conv2d,
                                                                                      _conv_bn)):
            with graph.inserting_after(node):
                conv = graph.call_function(_channels_last, (node,))
            node.replace_all_uses_with(conv, delete_user_cb=lambda user: user is not conv)


def _conv_bn(x, w, b, stride, padding, dilation, groups, bn):
    """conv2d followed by an eval-mode batch norm, as one convolution with scaled weights.

    The scaled weight and bias are recomputed from the layers' current tensors at every call
    (a few KB of arithmetic), so gradients reach the conv weight and the norm's affine
    parameters exactly as through the two layers; the result differs only by rounding.
    """
    if bn.training or bn.running_var is None:          # batch statistics: keep the two layers
        return bn(F.conv2d(x, w, b, stride, padding, dilation, groups))
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if b is not None:
        shift = shift + b * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return F.conv2d(x, w * scale.reshape(-1, 1, 1, 1), shift, stride, padding, dilation, groups)


torch.fx.wrap("_conv_bn")


def fold_batchnorm(gm: torch.fx.GraphModule) -> int:
    """Merge every BatchNorm2d that directly follows a convolution into it; returns the count.

    Exact up to rounding: (conv(x, w) + b - mean) * g / sqrt(var + eps) + beta is the
    convolution with weight w * g / sqrt(var + eps) and the matching bias, and it saves one
    full pass over the map per norm layer (about a fifth of a ResNet's dense time on CPU).
    """
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), torch.nn.BatchNorm2d):
            continue
        conv = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not (isinstance(conv, torch.fx.Node) and conv.op == "call_function" and
                conv.target in (F.conv2d, torch.conv2d) and len(conv.args) == 7 and not conv.kwargs and
                len(conv.users) == 1):
            continue
        with gm.graph.inserting_before(node):
            bn = gm.graph.get_attr(node.target)
            fused = gm.graph.call_function(_conv_bn, (*conv.args, bn))
        node.replace_all_uses_with(fused)
        gm.graph.erase_node(node)
        gm.graph.erase_node(conv)
        folded += 1
    return folded


def rewrite(body: torch.fx.GraphModule, options: Optimizations) -> torch.fx.GraphModule:
    """A new GraphModule over the same parameters with the exact graph rewrites of `options`."""
    graph = torch.fx.Graph()
    out = graph.graph_copy(body.graph, {})
    graph.output(out)
    gm = torch.fx.GraphModule(body, graph, class_name="OptimizedDenseBody")
    drop_identity_windows(gm)
    if options.fold_batchnorm:
        fold_batchnorm(gm)
    if options.channels_last:
        to_channels_last(gm)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm


def optimize_body(body: torch.fx.GraphModule, options: Optimizations | None) -> torch.nn.Module:
    """The body densify runs: the plain graph (options None), rewritten, and compiled if asked."""
    if options is None:
        return body
    body = rewrite(body, options)
    if options.compile:
        body = torch.compile(body, **dict(options.compile_options or {}))
    return body


@contextlib.contextmanager
def num_threads(n: int | None):
    """Run with n intra-op threads, restoring the previous setting (None: leave it alone)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["Optimizations", "optimize_body", "rewrite", "drop_identity_windows", "fold_batchnorm",
           "to_channels_last", "num_threads"]
