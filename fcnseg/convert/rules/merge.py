"""Where maps meet: element-wise arithmetic of several maps, and channel concatenation.

Every map is aligned at its top-left corner, so maps of one size meet as they are, trimmed at the
bottom/right to the smallest (rows past the end of a map belong to no output pixel)."""
from __future__ import annotations

import torch

from ... import ops
from ...geometry import Geo
from ..errors import UnsupportedLayerError


def merge(cv, node, layer):
    tensors = cv.tensor_inputs(node)
    for a in node.all_input_nodes:
        v = cv.values[a]
        if cv.geo[a].kind == "const" and isinstance(v, torch.Tensor) and v.numel() > 1 and \
                (v.dim() < 2 or tuple(v.shape[-2:]) != (1, 1) or cv.geo[tensors[0]].kind == "flat"):
            raise UnsupportedLayerError(f"layer '{node.name}' combines the features with a constant of shape "
                                        f"{tuple(v.shape)}: a value per position cannot be shared by a dense pass")
    geo = merged_geo(cv, node, tensors)
    cv.env[node] = cv.copy_node(node, trimmed(cv, tensors))
    cv.geo[node] = geo


def cat(cv, node, layer):
    tensors = list(node.args[0])
    nd = cv.values[tensors[0]].dim()
    if int(layer.dim) % nd != 1:
        raise UnsupportedLayerError(f"layer '{layer.name}' concatenates along dim {layer.dim}; only channel "
                                    "concatenation (dim 1) converts")
    geo = merged_geo(cv, node, tensors)
    maps = trimmed(cv, tensors)
    cv.env[node] = cv.graph.call_function(torch.cat, ([maps[t] for t in tensors], 1))
    cv.geo[node] = geo


def merged_geo(cv, node, tensors):
    """The Geo of the merged map; refuses maps of different sizes or strides, and a patch-global
    value broadcast over a map outside the per-patch tail."""
    geos = [cv.geo[t] for t in tensors]
    first = geos[0]
    for g in geos:
        if g.kind != first.kind or g.hw != first.hw or g.d != first.d:
            if (1, 1) in (g.hw, first.hw) and node in cv.per_patch:
                continue
            if (1, 1) in (g.hw, first.hw):
                raise UnsupportedLayerError(
                    f"layer '{node.name}' broadcasts a value pooled over the whole patch (e.g. squeeze-"
                    "excitation) over a feature map: each patch scales its own map differently")
            raise UnsupportedLayerError(f"layer '{node.name}' combines maps of sizes {first.hw} and {g.hw} "
                                        f"(strides {first.d}, {g.d}); crop them to one size "
                                        "(fcnseg.strip_padding does this)")
    rf = tuple(max(g.rf[a] for g in geos) for a in range(2))
    big = max(geos, key=lambda g: g.hw[0] * g.hw[1])
    return Geo(big.kind, big.hw, big.d, big.g, rf, big.offset)


def trimmed(cv, tensors):
    """node -> its dense map trimmed to the smallest of the others."""
    if len(tensors) < 2:
        return {t: cv.env[t] for t in tensors}
    return {t: cv.graph.call_function(ops.trim_to_smallest, (cv.env[t], *[cv.env[o] for o in tensors if o is not t]))
            for t in tensors}
