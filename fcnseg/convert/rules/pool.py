"""Pooling: windows dilated like convolutions; adaptive and global pooling as fixed windows."""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from ... import ops
from ...geometry import Geo
from ..errors import PatchSizeError, UnsupportedLayerError
from .pointwise import pointwise
from .spatial import spatial_input, window


def pool(cv, node, layer):
    x, geo = spatial_input(cv, node, layer)
    t1, dil, out = window(cv, node, layer, x, geo)
    c = int(cv.values[x].shape[1])
    plain, split_out, plan = cv.edges.plan(layer, x, cv.values[x].shape[-2:], out.hw)
    k = layer.kernel[0] * layer.kernel[1]
    if plain:
        cv.env[node] = pool_window(cv, layer, cv.env[x], layer.kernel, t1, dil, layer.divisor, c)
        taps = k
    elif layer.pool == "max":
        taps = cv.edges.emit_windows(
            node, x, split_out, plan, dil, t1,
            lambda src, ry, rx: pool_window(cv, layer, src, (ry[1] - ry[0], rx[1] - rx[0]), t1, dil, None, c),
            lambda terms, _: cv.edges.combine(terms, torch.maximum))
    else:
        # window sums, added, then divided once by the class's divisor: for a partial window
        # PyTorch divides by the taps inside the map (padding 0), or by divisor_override
        def mean(terms, size):
            return cv.graph.call_function(operator.truediv, (cv.edges.combine(terms, operator.add),
                                                             float(layer.divisor or size)))
        taps = cv.edges.emit_windows(
            node, x, split_out, plan, dil, t1,
            lambda src, ry, rx: pool_window(cv, layer, src, (ry[1] - ry[0], rx[1] - rx[0]), t1, dil, 1, c),
            mean)
    cv.geo[node] = out
    cv.record(layer, out, t1, dil, c * k, out.hw, taps / k)


def pool_window(cv, layer, xn, kernel, t1, dil, divisor, channels):
    if kernel == (1, 1) and t1 == (1, 1) and divisor in (None, 1):
        return xn        # a 1x1 window at stride 1 (adaptive pooling at its own size) is the identity
    if layer.pool == "max":
        return cv.graph.call_function(F.max_pool2d, (xn, kernel, t1, 0, dil))
    if dil == (1, 1) and divisor != 1:
        return cv.graph.call_function(F.avg_pool2d, (xn, kernel, t1, 0, False, True, divisor))
    # window sums (divisor 1) as a depthwise convolution: exports everywhere, unlike divisor_override
    return cv.graph.call_function(ops.avg_pool2d_dilated, (xn, kernel, t1, dil, divisor, channels))


def adaptive(cv, node, layer):
    """Adaptive pooling: at a fixed patch size, one window size and one step (uniform windows only)."""
    x = node.args[0]
    h_in = tuple(cv.values[x].shape[-2:])
    o = layer.out_size if isinstance(layer.out_size, (tuple, list)) else (layer.out_size, layer.out_size)
    o = tuple(h_in[a] if o[a] is None else int(o[a]) for a in range(2))
    k, t = [], []
    for a in range(2):
        starts = [i * h_in[a] // o[a] for i in range(o[a])]
        ends = [-((-(i + 1) * h_in[a]) // o[a]) for i in range(o[a])]
        sizes = {e - s for s, e in zip(starts, ends)}
        steps = {b - a_ for a_, b in zip(starts, starts[1:])} or {1}
        if len(sizes) != 1 or len(steps) != 1 or min(steps) < 1:
            raise PatchSizeError(
                f"layer '{layer.name}': adaptive pooling from {h_in} to {o} uses unequal windows for patch size "
                f"{cv.patch_size}; choose a patch size whose map at this layer is a multiple of {o}")
        k.append(sizes.pop())
        t.append(steps.pop())
    layer.kernel, layer.stride, layer.kind = tuple(k), tuple(t), "pool"
    pool(cv, node, layer)


def global_pool(cv, node, layer):
    """mean/amax/sum over dims: over both spatial dims a window of the map's size, over channels
    a pointwise layer."""
    x = node.args[0]
    nd = cv.values[x].dim()
    if layer.dim is None:
        raise UnsupportedLayerError(f"layer '{layer.name}' reduces over every dim, the batch included; "
                                    "reduce over (2, 3) for global pooling")
    dims = layer.dim if isinstance(layer.dim, (tuple, list)) else (layer.dim,)
    dims = {int(d) % nd for d in dims}
    if cv.geo[x].kind == "flat":
        if cv.geo[x].hw == (1, 1) and dims == {1} and layer.extra.get("keepdim"):
            return cv.edges.per_class(node, layer, pointwise)   # a sum over features, kept as (N, 1)
        raise UnsupportedLayerError(f"layer '{layer.name}' reduces a flattened feature vector; only "
                                    "reductions with keepdim=True over the features of a 1x1 vector convert")
    if not dims & {nd - 2, nd - 1}:           # a reduction over channels is pointwise in space
        return cv.edges.per_class(node, layer, pointwise)
    if dims != {nd - 2, nd - 1} or nd != 4:
        raise UnsupportedLayerError(f"layer '{layer.name}' reduces over dims {sorted(dims)}; only global "
                                    "pooling over both spatial dims of an (N, C, H, W) map converts")
    layer.kernel, layer.stride, layer.kind = tuple(cv.values[x].shape[-2:]), (1, 1), "pool"
    pool(cv, node, layer)
    if not layer.extra.get("keepdim"):
        cv.geo[node] = Geo("flat", (1, 1), *[getattr(cv.geo[node], f) for f in ("d", "g", "rf", "offset")])
