"""Layers that act on each position alone (activations, eval-mode norms, dropout) and softmax."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ...geometry import Geo
from ..errors import UnsupportedLayerError
from ..layers import PER_FEATURE_MODULES, TRAIN_MODE_UNSAFE


def pointwise(cv, node, layer):
    x = node.all_input_nodes[0]
    geo = cv.geo[x]
    if geo.kind == "flat" and geo.hw != (1, 1) and isinstance(layer.module, PER_FEATURE_MODULES):
        raise UnsupportedLayerError(f"layer '{layer.name}' has a parameter per flattened feature of a "
                                    f"{geo.hw} map: that is a parameter per position, which a dense pass "
                                    "cannot share")
    if isinstance(layer.module, TRAIN_MODE_UNSAFE) and (layer.name, layer.module) not in cv.unsafe:
        cv.unsafe.append((layer.name, layer.module))
    if isinstance(layer.module, nn.BatchNorm1d):
        # BatchNorm1d refuses 4-D input; the same affine map per channel via the functional form
        m = layer.module
        args = [cv.env[x]] + [cv.attr(f"{node.target}.{p}") if getattr(m, p) is not None else None
                              for p in ("running_mean", "running_var", "weight", "bias")]
        cv.env[node] = cv.graph.call_function(F.batch_norm, tuple(args), {"training": False, "eps": m.eps})
    else:
        cv.env[node] = cv.copy_node(node)
        if node.op == "call_module":
            cv.module(node.target)
    cv.geo[node] = Geo(geo.kind, geo.hw, geo.d, geo.g, geo.rf, geo.offset)
    cv.layout.follow(node, x)


def softmax(cv, node, layer):
    x = node.args[0]
    nd = cv.values[x].dim()
    if int(layer.dim) % nd != 1:
        raise UnsupportedLayerError(f"layer '{layer.name}' normalises over dim {layer.dim}; only the class "
                                    "dimension (1) converts")
    log = isinstance(layer.module, nn.LogSoftmax) or "log" in getattr(node.target, "__name__", str(node.target))
    cv.env[node] = cv.graph.call_function(F.log_softmax if log else F.softmax, (cv.env[x],), {"dim": 1})
    cv.geo[node] = cv.geo[x]
