"""Linear layers: an FC layer reading a flattened C x h x w map is an h x w convolution."""
from __future__ import annotations

from ...geometry import Geo
from ..errors import UnsupportedLayerError
from .conv import conv_windows


def linear(cv, node, layer):
    x = node.args[0]
    geo, w_val = cv.geo[x], (layer.module.weight if layer.module is not None else cv.val(node.args[1]))
    shape = tuple(cv.values[x].shape)
    if geo.kind != "flat" or len(shape) != 2:
        raise UnsupportedLayerError(f"layer '{layer.name}' (Linear) applies to input of shape {shape}; fcnseg "
                                    "converts Linear layers on flattened (N, C*h*w) features")
    h, w = geo.hw
    c = shape[1] // (h * w)
    out_f = w_val.shape[0]
    if layer.module is not None:
        wn = cv.attr(layer.weight)
        b = cv.attr(layer.bias) if layer.bias is not None else None
    else:
        wn, b = cv.env[node.args[1]], cv.map_args(layer.bias)
    # (out, C*h*w) -> (out, C, h, w), in the dim order the patch flattened its map in
    w4 = cv.layout.flat_weight(cv.graph, x, wn, out_f, (c, h, w))
    dil = geo.r
    layer.kernel, layer.stride, layer.dilation = (h, w), (1, 1), (1, 1)
    taps = conv_windows(cv, node, layer, x, (h, w), (1, 1), w4, b, (1, 1), dil, 1)
    rf = tuple(geo.rf[a] + (geo.hw[a] - 1) * geo.d[a] for a in range(2))
    cv.geo[node] = Geo("flat", (1, 1), geo.d, geo.g, rf, geo.offset)
    cv.record(layer, cv.geo[node], (1, 1), dil, 2 * shape[1] * out_f, (1, 1), taps / (h * w))
