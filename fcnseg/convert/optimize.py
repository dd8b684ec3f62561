"""The optimising rewrite of a dense body: same values, laid out and scheduled for speed.

`fcnseg.densify(model)` applies it by default (`optimize=True`); `optimize=False` keeps the
plain converted graph, `optimize=Optimizations(...)` chooses the parts. What each part does
and why it is exact: docs/algorithm.md, "The optimising rewrite".

- identity windows removed (`fcnseg.convert.pooling`): a 1x1 average/max pool (what a Flatten
  after an already 1x1 map or an adaptive pool to the map's own size becomes) is a copy, or a
  depthwise convolution with a ones kernel for the dilated average. Dropping it is exact.
- eval-mode batch norm folded into the convolution before it (one pass over the map fewer).
- channels_last end to end. On CPU, max pooling at stride 1 with dilation is several times
  slower in NCHW than in channels_last (the NHWC kernel vectorises over channels), and
  dilated convolutions run as fast or faster in channels_last. The input is converted once;
  a convolution on a single-channel map gets its kernel as a view with unambiguous NHWC
  strides, so that it writes its output NHWC itself (see `to_channels_last`).
- freed maps reused within a pass (CPU, glibc): see `fcnseg.runtime.reuse_freed_memory`.
- wide FC-derived convolutions (a reduction of C*kh*kw >= GATHERED_MIN_REDUCTION, e.g. VGG's
  fc6) as one matrix product over gathered windows in inference on CPU: see `_conv_gathered`.
- in inference on CPU: a ReLU that follows a convolution (directly, or after a max pool it
  commutes with) applied by oneDNN as the convolution writes its output (`_conv_relu`), and
  small max pooling windows as maxima of shifted views (`pooling._max_pool2d`), without the int64
  indices that max_pool2d computes even when nothing needs them. Both give the same values
  bit for bit.
- optional: a fixed intra-op thread count for the forward pass, and torch.compile of the body
  (inductor; it reassociates sums, so it is exact up to float rounding like everything else).

The rewritten graph reads the classifier's own parameter tensors (no copies), so training
through it trains the classifier.
"""
from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from ..ops import as_pair
from .eager import captured, plain_cpu_window, records_grad
from .options import Optimizations, num_threads
from .pooling import drop_identity_windows, index_free_max_pooling, is_plain_max_pool, retarget_calls

CL = torch.channels_last


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


# From this reduction length (in_channels * kh * kw) on, one matrix product over gathered windows
# beats oneDNN's direct convolution on CPU: oneDNN reorders a wide FC-derived kernel (VGG-16's fc6)
# on every call, while a narrow one (the membrane net's fc1) runs faster direct.
GATHERED_MIN_REDUCTION = 4096
GATHERED_BLOCK_BYTES = 64 * 2 ** 20       # gathered windows per matrix product, at most
# ... but only on small outputs, or for 1x1 kernels (then the gather is a plain strided view): on
# larger outputs oneDNN's NCHW direct kernel is the fastest for these wide convolutions. The
# measurements that set both limits: docs/benchmarks.md, "What the default path does".
GATHERED_MAX_OUTPUT_PIXELS = 24 * 24


def _conv(x, w, b, stride, padding, dilation, groups):
    """F.conv2d; when autograd records a dense layer on CPU, with the weight gradient summed over
    bands of output rows (`_BandedWeightGradConv`)."""
    if records_grad(x, w, b) and plain_cpu_window(x, stride, padding):
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
    if not _gathers(x, w, b, stride, padding, groups):
        return _conv(x, w, b, stride, padding, dilation, groups)
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
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


def _gathers(x, w, b, stride, padding, groups) -> bool:
    """Whether `_conv_gathered` runs this convolution as matrix products over gathered windows."""
    ci, kh, kw = w.shape[1:]
    return (ci * kh * kw >= GATHERED_MIN_REDUCTION and groups == 1 and plain_cpu_window(x, stride, padding)
            and x.is_contiguous(memory_format=CL) and not records_grad(x, w, b))


def _fuses_relu(x, w, b, stride, padding, groups) -> bool:
    """oneDNN can apply the ReLU as the convolution writes its output: inference on CPU, float32 or
    bfloat16 NHWC maps, outside autocast (the fused op has no autocast rule), run eagerly, and not
    a convolution that `_conv_gathered` computes as matrix products."""
    return (x.device.type == "cpu" and torch.backends.mkldnn.is_available() and not captured()
            and x.dtype in (torch.float32, torch.bfloat16) and w.dtype == x.dtype
            and (b is None or b.dtype == x.dtype) and x.is_contiguous(memory_format=CL)
            and not records_grad(x, w, b) and not torch.is_autocast_enabled("cpu")
            and not _gathers(x, w, b, stride, padding, groups))


def _conv_relu(x, w, b, stride, padding, dilation, groups):
    """relu(conv2d(x, w, b, stride, padding, dilation, groups)).

    Where `_fuses_relu` allows, one oneDNN call with the ReLU as a post-op: the same convolution
    kernel, so the same values bit for bit, and one pass over the output map fewer. Otherwise the
    convolution as `_conv_gathered` runs it, then the ReLU in place on its fresh output.
    """
    if _fuses_relu(x, w, b, stride, padding, groups):
        return torch.ops.mkldnn._convolution_pointwise(
            x, w, b, list(as_pair(padding)), list(as_pair(stride)), list(as_pair(dilation)), groups, "relu", [], "")
    return torch.relu_(_conv_gathered(x, w, b, stride, padding, dilation, groups))


torch.fx.wrap("_conv_relu")


if torch.backends.mkldnn.is_available():
    @register_flop_formula(torch.ops.mkldnn._convolution_pointwise)
    def _fused_conv_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        """FLOPs of the fused convolution, so that torch.utils.flop_counter counts `_conv_relu` as
        it counts conv2d: 2 per multiply-add."""
        return 2 * math.prod(out_shape) * math.prod(w_shape[1:])


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


CONVS = (F.conv2d, torch.conv2d)


def _is_plain_conv(node) -> bool:
    """A conv2d node as the converter writes it: (x, w, b, stride, padding, dilation, groups)."""
    return node.op == "call_function" and node.target in CONVS and len(node.args) == 7 and not node.kwargs


def gather_wide_convolutions(gm: torch.fx.GraphModule) -> int:
    """Route every plain conv2d node through `_conv_gathered` (which decides per call); returns
    the count."""
    return retarget_calls(gm, _is_plain_conv, _conv_gathered)


def _is_relu(gm, node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in (F.relu, F.relu_, torch.relu, torch.relu_)
    return node.op == "call_method" and node.target in ("relu", "relu_")


def fuse_conv_relu(gm: torch.fx.GraphModule) -> int:
    """Give every ReLU that reads a plain conv2d to the convolution (`_conv_relu`); returns the count.

    Also a ReLU after a max pool of a convolution: relu(max(a, b, ...)) == max(relu(a), relu(b),
    ...), since ReLU is monotone, so conv -> max pool -> ReLU becomes conv+ReLU -> max pool, exact.
    Only where the convolution (and the pool) have no other reader.
    """
    fused = 0
    for node in list(gm.graph.nodes):
        if not _is_relu(gm, node) or not isinstance(node.args[0], torch.fx.Node):
            continue
        src, pool = node.args[0], None
        if is_plain_max_pool(src) and len(src.users) == 1 and isinstance(src.args[0], torch.fx.Node):
            pool, src = src, src.args[0]
        if not (_is_plain_conv(src) and len(src.users) == 1):
            continue
        with gm.graph.inserting_before(src):
            conv = gm.graph.call_function(_conv_relu, src.args)
        src.replace_all_uses_with(conv)
        gm.graph.erase_node(src)
        node.replace_all_uses_with(pool if pool is not None else conv)
        gm.graph.erase_node(node)
        fused += 1
    return fused


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
        is_conv = node.op == "call_function" and node.target in (*CONVS, _conv_bn, _conv_gathered, _conv_relu)
        if is_conv and len(node.args) > 1 and isinstance(node.args[1], torch.fx.Node):
            with graph.inserting_before(node):
                kernel = graph.call_function(_kernel_channels_last, (node.args[1],))
            node.args = (node.args[0], kernel, *node.args[2:])
            if node.target is _conv_bn:
                node.kwargs = {**node.kwargs, "channels_last": True}
        if node.op == "placeholder" or is_conv:
            with graph.inserting_after(node):
                conv = graph.call_function(_channels_last, (node,))
            node.replace_all_uses_with(conv, delete_user_cb=lambda user, conv=conv: user is not conv)


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
                _is_plain_conv(conv) and len(conv.users) == 1):
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
        fuse_conv_relu(gm)                    # the fused kernel needs NHWC maps
        gather_wide_convolutions(gm)          # so does the gathered layout
        to_channels_last(gm)
    index_free_max_pooling(gm)
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


__all__ = ["Optimizations", "optimize_body", "rewrite", "drop_identity_windows", "fold_batchnorm",
           "fuse_conv_relu", "index_free_max_pooling", "to_channels_last", "gather_wide_convolutions",
           "num_threads"]
