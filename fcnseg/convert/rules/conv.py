"""Convolutions: stride kept up to the output stride, the kernel dilated by the rate after it."""
from __future__ import annotations

import operator

import torch.nn.functional as F

from .spatial import spatial_input, window


def conv(cv, node, layer):
    x, geo = spatial_input(cv, node, layer)
    w_val = cv.val(node.args[1]) if layer.module is None else layer.module.weight
    layer.kernel = tuple(w_val.shape[-2:])
    t1, dil, out = window(cv, node, layer, x, geo)
    if layer.module is not None:
        w = cv.attr(layer.weight)
        b = cv.attr(layer.bias) if layer.bias is not None else None
    else:
        w, b = cv.map_args(node.args[1]), cv.map_args(layer.bias)
    taps = conv_windows(cv, node, layer, x, cv.values[x].shape[-2:], out.hw, w, b, t1, dil, layer.groups)
    cv.geo[node] = out
    c_out, c_in_g = w_val.shape[0], w_val.shape[1]
    k = layer.kernel[0] * layer.kernel[1]
    cv.record(layer, out, t1, dil, 2 * c_in_g * k * c_out, out.hw, taps / k)


def conv_windows(cv, node, layer, x, n_in, n_out, w, b, t1, dil, groups):
    """conv2d(x, w) in the dense network; with edge maps, a sum of convolutions with slices of w
    (views: gradients reach w). Returns the taps computed per position."""
    plain, split_out, plan = cv.edges.plan(layer, x, n_in, n_out)
    if plain:
        cv.env[node] = cv.graph.call_function(F.conv2d, (cv.env[x], w, b, t1, 0, dil, groups))
        return layer.kernel[0] * layer.kernel[1]

    def term(src, ry, rx):
        full = ry == (0, layer.kernel[0]) and rx == (0, layer.kernel[1])
        w_sub = w if full else cv.graph.call_function(
            operator.getitem, (w, (slice(None), slice(None), slice(*ry), slice(*rx))))
        # the bias once per output class: every class has exactly one term starting at tap (0, 0)
        bias = b if ry[0] == 0 and rx[0] == 0 else None
        return cv.graph.call_function(F.conv2d, (src, w_sub, bias, t1, 0, dil, groups))

    return cv.edges.emit_windows(node, x, split_out, plan, dil, t1, term,
                                 lambda terms, _: cv.edges.combine(terms, operator.add))
