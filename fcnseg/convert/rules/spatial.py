"""What every windowed layer (convolution, pooling) checks and computes before its window."""
from __future__ import annotations

from ...geometry import Geo
from ..errors import PaddingError, UnsupportedLayerError

STRIP_HINT = ("use `valid_model, patch_size = fcnseg.strip_padding(model)` to remove internal padding "
              "(the network becomes 'valid' and its patch grows), then densify valid_model")


def spatial_input(cv, node, layer):
    """The layer's input node and its Geo; refuses anything but an unpadded (N, C, H, W) map."""
    x = node.args[0]
    geo = cv.geo[x]
    if geo.kind != "map" or cv.values[x].dim() != 4:
        raise UnsupportedLayerError(f"layer '{layer.name}' ({layer.kind}) expects an (N, C, H, W) map")
    if any(layer.padding):
        raise PaddingError(f"layer '{layer.name}' zero-pads its input by {layer.padding}: a dense pass cannot "
                           f"reproduce the zeros at every patch's border; {STRIP_HINT}")
    return x, geo


def window(cv, node, layer, x, geo):
    """The dense stride, dilation and output Geo of a windowed layer (keeps (*) true): strides
    kept up to the output stride, the window dilated by the rate r after that."""
    out_val = cv.values[node]
    h_out = out_val.shape[-2:] if out_val.dim() == 4 else (1, 1)   # global pooling without keepdim
    # a last window past the edge of the map (ceil_mode) is handled by EdgeMaps.plan
    t1, g = cv.step(geo, layer.stride, layer.name)
    dil = (layer.dilation[0] * geo.r[0], layer.dilation[1] * geo.r[1])
    d = (geo.d[0] * layer.stride[0], geo.d[1] * layer.stride[1])
    rf = tuple(geo.rf[a] + (layer.kernel[a] - 1) * layer.dilation[a] * geo.d[a] for a in range(2))
    return t1, dil, Geo("map", tuple(h_out), d, g, rf, geo.offset)
