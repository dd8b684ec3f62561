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
  dilated convolutions run as fast or faster in channels_last. The input is converted once;
  a convolution on a single-channel map gets its kernel as a view with unambiguous NHWC
  strides, so that it writes its output NHWC itself (see `to_channels_last`).
- freed maps reused within a pass (CPU, glibc): see `fcnseg.runtime.reuse_freed_memory`.
- wide FC-derived convolutions (a reduction of C*kh*kw >= GATHERED_MIN_REDUCTION, e.g. VGG's
  fc6) as one matrix product over gathered windows in inference on CPU: see `_conv_gathered`.
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
    reuse_memory: on CPU with glibc, serve the forward pass's maps from the malloc heap so that a
        freed map's pages are reused by the next one instead of fresh zeroed pages
        (`fcnseg.runtime.reuse_freed_memory`); values are untouched. Inference passes only
        (autograd off): a training forward keeps its maps for the backward pass, so a heap
        trimmed on leaving the forward would be refilled with fresh pages by the backward,
        which made a training step slower (docs/benchmarks.md). Training instead runs all its
        steps, forward and backward, inside one block (fcnseg.train does).
    """
    channels_last: bool = True
    fold_batchnorm: bool = True
    compile: bool = False
    threads: int | None = None
    compile_options: Mapping | None = None
    reuse_memory: bool = True

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


def _kernel_channels_last(w: torch.Tensor) -> torch.Tensor:
    """A (C_out, 1, kh, kw) kernel as a zero-copy view with strides (kh*kw, 1, kw, 1).

    With one input channel per group, the default strides describe NCHW and NHWC at once and
    PyTorch resolves the tie to NCHW: on a single-channel image the first convolution then
    writes NCHW and a full copy to NHWC follows. The view addresses the same elements, so values
    and gradients are unchanged, and it marks the kernel NHWC, so the convolution writes NHWC.
    """
    if w.dim() == 4 and w.shape[1] == 1 and w.is_contiguous() and w.shape[2] * w.shape[3] > 1:
        return w.as_strided(w.shape, (w.shape[2] * w.shape[3], 1, w.shape[3], 1))
    return w


torch.fx.wrap("_kernel_channels_last")


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


# From this reduction length (in_channels * kh * kw) on, one matrix product over gathered windows
# beats oneDNN's direct convolution on CPU: oneDNN reorders a wide FC-derived kernel (VGG-16's fc6)
# on every call, while a narrow one (the membrane net's fc1) runs faster direct.
GATHERED_MIN_REDUCTION = 4096
GATHERED_BLOCK_BYTES = 64 * 2 ** 20       # gathered windows per matrix product, at most
# ... but only on small outputs, or for 1x1 kernels (then the gather is a plain strided view): on
# larger outputs oneDNN's NCHW direct kernel is the fastest for these wide convolutions. The
# measurements that set both limits: docs/benchmarks.md, "What the default path does".
GATHERED_MAX_OUTPUT_PIXELS = 24 * 24


def _records_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _plain_cpu_window(x, stride, padding) -> bool:
    """A stride-1 unpadded convolution on CPU, run eagerly (not traced, exported or compiled)."""
    return (as_pair(stride) == (1, 1) and as_pair(padding) == (0, 0) and x.device.type == "cpu"
            and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()))


def _conv(x, w, b, stride, padding, dilation, groups):
    """F.conv2d; when autograd records a dense layer on CPU, with the weight gradient summed over
    bands of output rows (`_BandedWeightGradConv`)."""
    if _records_grad(x, w, b) and _plain_cpu_window(x, stride, padding):
        return _BandedWeightGradConv.apply(x, w, b, as_pair(dilation), groups)
    return F.conv2d(x, w, b, stride, padding, dilation, groups)


def _conv_gathered(x, w, b, stride, padding, dilation, groups):
    """F.conv2d(x, w, b, stride, padding, dilation, groups), as matrix products over gathered
    windows where that is faster (see GATHERED_MIN_REDUCTION) and nothing needs its graph.

    For an NHWC map, the window of output pixel (y, x) with kernel (C, kh, kw) and dilation
    (d0, d1) is x[:, y + a*d0, x + b*d1] over (c, a, b): a strided view gathers a block of
    output rows into a (rows*W_out, C*kh*kw) matrix, ordered like the flattened kernel (the FC
    layer's own weight matrix), and one addmm gives those rows' NHWC output. The same products
    and sums as the convolution, in another order: exact up to float rounding. Used only in
    inference on CPU (autograd through the gather would be slow; tracers and exporters see the
    plain convolution). With autograd recording on CPU the convolution runs as oneDNN's, and its
    weight gradient is summed over bands of output rows (`_BandedWeightGradConv`).
    """
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    if (ci * kh * kw < GATHERED_MIN_REDUCTION or groups != 1 or not _plain_cpu_window(x, stride, padding)
            or not x.is_contiguous(memory_format=CL) or _records_grad(x, w, b)):
        return _conv(x, w, b, stride, padding, dilation, groups)
    d0, d1 = as_pair(dilation)
    ho, wo = h - (kh - 1) * d0, wd - (kw - 1) * d1
    if kh * kw > 1 and ho * wo > GATHERED_MAX_OUTPUT_PIXELS:        # NCHW direct, back to NHWC
        return F.conv2d(x.contiguous(), w.contiguous(), b, 1, 0, dilation, 1).contiguous(memory_format=CL)
    sn, sc, sh, sw = x.stride()                                     # NHWC: sc == 1
    weight = w.reshape(o, ci * kh * kw).t()                         # (C*kh*kw, O), a view
    out = x.new_empty(n, ho, wo, o)                                 # NHWC
    rows = max(1, GATHERED_BLOCK_BYTES // (wo * ci * kh * kw * x.element_size()))
    for i in range(n):
        for r0 in range(0, ho, rows):
            r = min(rows, ho - r0)
            windows = x.as_strided((r, wo, ci, kh, kw), (sh, sw, sc, d0 * sh, d1 * sw),
                                   x.storage_offset() + i * sn + r0 * sh)
            block = out[i, r0:r0 + r].view(r * wo, o)
            if b is None:
                torch.mm(windows.reshape(r * wo, -1), weight, out=block)
            else:
                torch.addmm(b, windows.reshape(r * wo, -1), weight, out=block)
    return out.permute(0, 3, 1, 2)                                  # (N, O, Ho, Wo), channels_last


torch.fx.wrap("_conv_gathered")


# Output rows per band of a weight gradient: the band's unfolded input (N * C/groups * kh * kw
# values per output pixel) stays under this. oneDNN's CPU weight gradient unfolds the whole
# input and, once that passes 1 GiB, falls back to its scalar reference kernel, orders of
# magnitude slower; below the limit bands are faster too (cache-sized unfolds). Measured:
# docs/benchmarks.md, "Weight gradients in bands of output rows".
BAND_UNFOLD_BYTES = 64 * 2 ** 20
_conv_backward = torch.ops.aten.convolution_backward


class _BandedWeightGradConv(torch.autograd.Function):
    """A stride-1, unpadded conv2d whose backward computes the weight gradient band by band.

    The weight gradient is a sum over output pixels, so summing it over bands of output rows
    (each band reads input rows r0 .. r1 - 1 + (kh - 1) * d) gives the same products and sums
    in another order: exact up to float rounding. The input gradient and the forward are
    oneDNN's own single calls. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, x, w, b, dilation, groups):
        ctx.save_for_backward(x, w)
        ctx.dilation, ctx.groups, ctx.has_bias = dilation, groups, b is not None
        return F.conv2d(x, w, b, 1, 0, dilation, groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        x_dtype, w_dtype = x.dtype, w.dtype
        # under autocast the forward ran in g's dtype (bf16/fp16) on float32 x and w: the
        # gradients are computed in that dtype, as autocast's own convolution does, and
        # returned in the dtype of the tensors they belong to
        x, w = x.to(g.dtype), w.to(g.dtype)
        d, groups = ctx.dilation, ctx.groups
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        args = ((1, 1), (0, 0), d, False, (0, 0), groups)
        gx = _conv_backward(g, x, w, None, *args, (True, False, False))[0] if need_x else None
        gw = None
        if need_w:
            n, ho, wo = g.shape[0], g.shape[2], g.shape[3]
            per_row = n * w.shape[1] * w.shape[2] * w.shape[3] * wo * x.element_size()
            rows = max(1, BAND_UNFOLD_BYTES // per_row)
            reach = (w.shape[2] - 1) * d[0]
            for r0 in range(0, ho, rows):
                r1 = min(ho, r0 + rows)
                part = _conv_backward(g[:, :, r0:r1], x[:, :, r0:r1 + reach], w, None, *args,
                                     (False, True, False))[1]
                gw = part if gw is None else gw.add_(part)
        gb = g.sum((0, 2, 3), dtype=w_dtype) if need_b and ctx.has_bias else None
        gx = gx.to(x_dtype) if gx is not None else None
        gw = gw.to(w_dtype) if gw is not None else None
        return gx, gw, gb, None, None


def gather_wide_convolutions(gm: torch.fx.GraphModule) -> int:
    """Route every plain conv2d node through `_conv_gathered` (which decides per call); returns
    the count."""
    count = 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in (F.conv2d, torch.conv2d) and len(node.args) == 7 \
                and not node.kwargs:
            node.target = _conv_gathered
            count += 1
    return count


def to_channels_last(gm: torch.fx.GraphModule) -> None:
    """Convert the input to channels_last and keep every convolution's output there.

    A (N, 1, H, W) input or (C, 1, kh, kw) weight is NCHW- and NHWC-contiguous at once, and
    PyTorch then picks NCHW for the convolution's output (and every later layer follows).
    Such kernels are passed as NHWC-strided views (`_kernel_channels_last`), so the
    convolution writes NHWC; every conv output is still converted, which costs nothing when it
    is already NHWC (contiguous() returns the tensor itself).
    """
    graph = gm.graph
    for node in list(graph.nodes):
        is_conv = node.op == "call_function" and node.target in (F.conv2d, torch.conv2d, _conv_bn, _conv_gathered)
        if is_conv and len(node.args) > 1 and isinstance(node.args[1], torch.fx.Node):
            with graph.inserting_before(node):
                kernel = graph.call_function(_kernel_channels_last, (node.args[1],))
            node.args = (node.args[0], kernel, *node.args[2:])
            if node.target is _conv_bn:
                node.kwargs = {**node.kwargs, "channels_last": True}
        if node.op == "placeholder" or is_conv:
            with graph.inserting_after(node):
                conv = graph.call_function(_channels_last, (node,))
            node.replace_all_uses_with(conv, delete_user_cb=lambda user: user is not conv)


def _conv_bn(x, w, b, stride, padding, dilation, groups, bn, channels_last=False):
    """conv2d followed by an eval-mode batch norm, as one convolution with scaled weights.

    The scaled weight and bias are recomputed from the layers' current tensors at every call
    (a few KB of arithmetic), so gradients reach the conv weight and the norm's affine
    parameters exactly as through the two layers; the result differs only by rounding.
    channels_last: give a single-input-channel scaled kernel NHWC strides (`to_channels_last`).
    """
    if bn.training or bn.running_var is None:          # batch statistics: keep the two layers
        return bn(_conv(x, w, b, stride, padding, dilation, groups))
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if b is not None:
        shift = shift + b * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    w = (w * scale.reshape(-1, 1, 1, 1)).contiguous()
    return _conv(x, _kernel_channels_last(w) if channels_last else w, shift, stride, padding, dilation, groups)


torch.fx.wrap("_conv_bn")


def fold_batchnorm(gm: torch.fx.GraphModule) -> int:
    """Merge every BatchNorm2d that directly follows a convolution into it; returns the count.

    Exact up to rounding: (conv(x, w) + b - mean) * g / sqrt(var + eps) + beta is the
    convolution with weight w * g / sqrt(var + eps) and the matching bias, and it saves one
    full pass over the map per norm layer.
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
        gather_wide_convolutions(gm)          # the gathered layout needs NHWC maps
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
           "to_channels_last", "gather_wide_convolutions", "num_threads"]
