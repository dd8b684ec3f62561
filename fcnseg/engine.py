"""The fast engine: the same dense network, laid out and scheduled for speed.

    fast_dense = fcnseg.engine.fast(fcnseg.densify(model))
    fast_dense(x)   # == dense(x) up to float reassociation, forward and backward

`fast` rewrites the dense body's fx graph; it never changes what is computed:
- channels_last end to end. On CPU, max pooling at stride 1 with dilation is several times
  slower in NCHW than in channels_last (the NHWC kernel vectorises over channels), and
  dilated convolutions run as fast or faster in channels_last. The input is converted once,
  and the output of a convolution on a single-channel map too (see `to_channels_last`).
- identity windows removed: a 1x1 average/max pool (what a Flatten after an already 1x1
  map or an adaptive pool to the map's own size becomes) is a copy, or a depthwise
  convolution with a ones kernel for the dilated average. Dropping it is exact.
- eval-mode batch norm folded into the convolution before it (one pass over the map fewer).
- the output is returned NCHW-contiguous, like the plain DenseNet's; maps read by a per-patch
  tail are handed to it NCHW (its gather is slow on NHWC).
- optional: a fixed intra-op thread count for the forward pass, and torch.compile of the body
  (inductor; it reassociates sums, so it is exact up to float rounding like everything else).

Parameters stay the classifier's own tensors (no copies), so training the fast network trains
the classifier, exactly as with the plain DenseNet.
"""
from __future__ import annotations

import contextlib

import torch
import torch.fx
import torch.nn.functional as F

from . import ops
from .dense import DenseNet

CL = torch.channels_last


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
        return ops._pair(kernel) == (1, 1) and ops._pair(stride) == (1, 1) and divisor in (None, 1)
    if node.target in (F.max_pool2d, F.avg_pool2d, torch._C._nn.avg_pool2d):
        kernel = node.args[1] if len(node.args) > 1 else node.kwargs.get("kernel_size")
        stride = node.args[2] if len(node.args) > 2 else node.kwargs.get("stride")
        if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
            stride = kernel                                   # PyTorch's default stride
        divisor = node.args[6] if node.target is not F.max_pool2d and len(node.args) > 6 else \
            node.kwargs.get("divisor_override")
        pad = node.args[3] if len(node.args) > 3 else node.kwargs.get("padding", 0)
        return (ops._pair(kernel) == (1, 1) and ops._pair(stride) == (1, 1) and ops._pair(pad) == (0, 0)
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


def rewrite(body: torch.fx.GraphModule, *, channels_last: bool = True, fold_bn: bool = True) -> torch.fx.GraphModule:
    """A new GraphModule over the same parameters with the exact speed rewrites applied."""
    graph = torch.fx.Graph()
    out = graph.graph_copy(body.graph, {})
    graph.output(out)
    gm = torch.fx.GraphModule(body, graph, class_name="FastDenseBody")
    drop_identity_windows(gm)
    if fold_bn:
        fold_batchnorm(gm)
    if channels_last:
        to_channels_last(gm)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm


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


class FastDenseNet(DenseNet):
    """A DenseNet whose body is the rewritten graph; same outputs, same parameters."""

    @classmethod
    def wrap(cls, dense: DenseNet, body, threads: int | None, options: dict) -> "FastDenseNet":
        # Copy every attribute of `dense` (the classifier, the per-patch tail, geometry...) with
        # fresh registries, so that replacing the body here leaves `dense` untouched.
        new = cls.__new__(cls)
        new.__dict__.update({k: (v.copy() if isinstance(v, dict) else v) for k, v in dense.__dict__.items()})
        new.body = body
        new.body.training = dense.training
        new.threads, new.options = threads, options
        return new

    def _run_tail(self, maps, ho, wo):
        # the tail gathers each pixel's features by advanced indexing, which is several times
        # slower on NHWC maps than on NCHW ones: one layout copy per map is cheaper
        return super()._run_tail([m.contiguous() for m in maps], ho, wo)

    def forward_valid(self, xp: torch.Tensor) -> torch.Tensor:
        with num_threads(self.threads):
            y = super().forward_valid(xp)
        return y.contiguous()          # (N, K, H', W') NCHW, like the plain DenseNet

    def extra_repr(self):
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{super().extra_repr()}, {opts}"


def fast(dense: DenseNet, *, channels_last: bool = True, fold_bn: bool = True, compile: bool = False,
         threads: int | None = None, compile_options: dict | None = None) -> FastDenseNet:
    """The fastest exact form of `dense` (a `fcnseg.densify` result) on this machine.

    channels_last: run every map in NHWC (the big CPU win for pooled networks; on CUDA it
        enables the tensor-core NHWC kernels).
    fold_bn: merge each eval-mode BatchNorm2d into the convolution before it (recomputed at
        every call from the live parameters, so training through it stays exact).
    compile: torch.compile the body (first call compiles for a few seconds to minutes; every
        new input shape recompiles unless dynamic shapes are enabled in compile_options).
    threads: intra-op threads during the forward pass (None: PyTorch's current setting).
    """
    if not isinstance(dense, DenseNet):
        raise TypeError(f"fcnseg.engine.fast expects the DenseNet returned by fcnseg.densify, got "
                        f"{type(dense).__name__}; call fast(fcnseg.densify(model))")
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be a positive count or None, got {threads}")
    body = dense.body
    if isinstance(body, torch.fx.GraphModule):
        body = rewrite(body, channels_last=channels_last, fold_bn=fold_bn)
    if compile:
        body = torch.compile(body, **(compile_options or {}))
    options = {"channels_last": channels_last, "fold_bn": fold_bn, "compile": compile, "threads": threads}
    return FastDenseNet.wrap(dense, body, threads, options)


__all__ = ["fast", "FastDenseNet", "rewrite", "drop_identity_windows", "fold_batchnorm", "to_channels_last",
           "num_threads"]
