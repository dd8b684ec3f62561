"""Spatial dims permuted before a flatten (NHWC ports): tracked here, and nowhere else.

Caffe/TensorFlow ports flatten their last map in another dim order (`x.permute(0, 2, 3, 1)`,
then a flatten) and keep FC weights trained in that order. The dense map stays (N, C, H, W): a
permute only records the order of the dims, the flatten keeps it, and the Linear layer that reads
the flattened vector reads its weight through a permuted view (`flat_weight`). Any other reader
of a permuted map is refused (`check`), naming the permuting layer (docs/algorithm.md, "Fully
connected layers become convolutions").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UnsupportedLayerError
from .layers import POINTWISE_METHODS

IDENTITY_4D = (0, 1, 2, 3)


def layout_free(node, layer) -> bool:
    """An elementwise layer without per-channel parameters: indifferent to the order of the dims."""
    if node.op == "call_method":
        return node.target in POINTWISE_METHODS
    if node.op == "call_function":
        return node.target not in (F.prelu, F.local_response_norm, F.batch_norm, torch.batch_norm)
    m = layer.module
    return not isinstance(m, (nn.LocalResponseNorm, nn.Dropout2d)) and not any(True for _ in m.parameters()) \
        and not any(True for _ in m.buffers())


class Layout:
    """node -> (order of its dims in the patch network, name of the layer that permuted them),
    for the nodes whose spatial dims were moved."""

    def __init__(self):
        self.moved = {}

    def __contains__(self, node) -> bool:
        return node in self.moved

    def order(self, node) -> tuple:
        return self.moved[node][0] if node in self.moved else IDENTITY_4D

    def permuted_by(self, node) -> str:
        return self.moved[node][1]

    def follow(self, node, src):
        """node holds src's features in src's dim order (a pointwise layer, a flatten)."""
        if src in self.moved:
            self.moved[node] = self.moved[src]

    def permute(self, node, src, order, name):
        """node is src with its dims permuted by `order` (the dense map itself does not move)."""
        after = tuple(self.order(src)[d] for d in order)
        self.moved.pop(node, None)
        if after != IDENTITY_4D:
            self.moved[node] = (after, name)

    def check(self, node, layer):
        """Refuse a layer that would read a permuted map as if it were (N, C, H, W)."""
        moved = [a for a in node.all_input_nodes if a in self.moved]
        if not moved or layer.kind in ("transpose", "reshape", "linear") or \
                (layer.kind == "pointwise" and layout_free(node, layer)):
            return
        order, name = self.moved[moved[0]]
        raise UnsupportedLayerError(
            f"layer '{layer.name}' reads the output of '{name}', which moves the spatial dims "
            f"(dims now in order {order}): that moves spatial data, which no dense map can "
            "hold; only a flatten followed by a Linear layer converts after such a permute (the Linear then "
            "reads its weight in the permuted order)")

    def flat_weight(self, graph, x, weight, out_features, sizes):
        """A Linear weight (out, C*h*w) read as an (out, C, h, w) kernel over the map that x, the
        flattened input, came from; sizes = (C, h, w). Views only: gradients reach the weight."""
        order = self.order(x)
        sizes = (None, *sizes)
        w4 = graph.call_method("view", (weight, out_features, *[sizes[d] for d in order[1:]]))
        if order != IDENTITY_4D:
            # the patch flattened its map in another dim order (an NHWC port): the same weight,
            # read through a permuted view
            w4 = graph.call_method("permute", (w4, 0, *[1 + order[1:].index(d) for d in (1, 2, 3)]))
        return w4
