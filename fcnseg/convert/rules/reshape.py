"""Layers that move data between dims: flatten/view/reshape, permute/transpose, channel splits
and indexing. Spatial data never moves in a dense map: only reshapes of the channel dims, a
flatten before a Linear layer (its order tracked by `Layout`) and channel slices convert."""
from __future__ import annotations

import math

import torch

from ... import ops
from ...geometry import Geo
from ..errors import UnsupportedLayerError
from .pointwise import pointwise


def reshape(cv, node, layer):
    x = node.args[0]
    geo, s_in, s_out = cv.geo[x], tuple(cv.values[x].shape), tuple(cv.values[node].shape)
    xn = cv.env[x]
    if len(s_out) == 2 and s_out[1] == math.prod(s_in[1:]):          # flatten
        cv.env[node] = xn if geo.kind == "flat" or len(s_in) == 4 else \
            cv.graph.call_function(ops.reshape_keep_spatial, (xn, (math.prod(s_in[1:-2]),)))
        cv.geo[node] = Geo("flat", geo.hw, geo.d, geo.g, geo.rf, geo.offset)
        cv.layout.follow(node, x)          # read by a Linear layer in the permuted order
    elif x in cv.layout:
        raise UnsupportedLayerError(
            f"layer '{layer.name}' reshapes {s_in} to {s_out} after '{cv.layout.permuted_by(x)}' permuted the "
            "spatial dims: that moves spatial data; only a flatten to (N, features) followed by a Linear layer "
            "converts")
    elif geo.kind == "flat" and len(s_out) == 4 and s_out[2:] == geo.hw:  # unflatten (N, C, h, w)
        cv.env[node] = xn
        cv.geo[node] = Geo("map", geo.hw, geo.d, geo.g, geo.rf, geo.offset)
    elif geo.kind == "map" and len(s_in) >= 4 and len(s_out) >= 4 and s_out[-2:] == s_in[-2:]:
        cv.env[node] = cv.graph.call_function(ops.reshape_keep_spatial, (xn, s_out[1:-2]))
        cv.geo[node] = geo
    else:
        raise UnsupportedLayerError(f"layer '{layer.name}' reshapes {s_in} to {s_out}; only flattening "
                                    "(N, C, h, w) -> (N, C*h*w) and reshapes of the channel dims convert")


def transpose(cv, node, layer):
    x = node.args[0]
    nd = cv.values[x].dim()
    args = layer.extra["args"]
    dims = [int(a) % nd for a in (args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args)]
    order = list(range(nd))
    if node.target in ("transpose", torch.transpose):
        order[dims[0]], order[dims[1]] = order[dims[1]], order[dims[0]]
    else:
        order = dims
    moved = {i for i in range(nd) if order[i] != i}
    if 0 in moved:
        raise UnsupportedLayerError(f"layer '{layer.name}' moves the batch dim; only channel and spatial dims "
                                    "may be permuted")
    if not moved & {nd - 2, nd - 1} and x not in cv.layout:
        return pointwise(cv, node, layer)          # channel dims only
    if nd != 4 or cv.geo[x].kind != "map":
        raise UnsupportedLayerError(f"layer '{layer.name}' moves the spatial dims of a {nd}-D tensor; only "
                                    "permutes of an (N, C, H, W) map that a flatten + Linear then read convert")
    # the dense map stays (N, C, H, W); the permuted order is remembered for the Linear layer
    # that reads it after a flatten (any other reader is refused by Layout.check)
    cv.env[node] = cv.env[x]
    cv.geo[node] = cv.geo[x]
    cv.layout.permute(node, x, tuple(order), layer.name)


def chunk(cv, node, layer):
    nd = cv.values[node.args[0]].dim()
    if cv.geo[node.args[0]].kind != "map" or int(layer.dim) % nd in (0, nd - 2, nd - 1):
        raise UnsupportedLayerError(f"layer '{layer.name}' splits along dim {layer.dim}; only channel splits convert")
    cv.env[node] = cv.copy_node(node)
    cv.geo[node] = Geo("tuple", *[getattr(cv.geo[node.args[0]], f) for f in ("hw", "d", "g", "rf", "offset")])


def getitem(cv, node, layer):
    """One map of a channel split, or a channel slice x[:, a:b]."""
    src = cv.geo[node.args[0]]
    idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    if src.kind in ("map", "flat") and len(idx) == 2 and idx[0] == slice(None) and isinstance(idx[1], slice) \
            and (src.kind == "map" or src.hw == (1, 1)):
        return pointwise(cv, node, layer)          # a channel slice x[:, a:b]
    if src.kind != "tuple":
        raise UnsupportedLayerError(f"layer '{node.name}' indexes a feature map; crop with "
                                    "fcnseg.ops.crop_to_smallest or remove the indexing")
    cv.env[node] = cv.copy_node(node)
    cv.geo[node] = Geo("map", src.hw, src.d, src.g, src.rf, src.offset)
