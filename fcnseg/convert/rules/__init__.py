"""The conversion rules, one per layer kind (`fcnseg.convert.layers.LAYER_KINDS`).

A rule `apply(cv, node, layer)` records the dense form of one traced node into the converter
`cv` (`fcnseg.convert.dense_graph.Converter`): its value in `cv.env`, its geometry in `cv.geo`.
A rule that reads its input's edge maps of partial ceil-mode windows itself says so; the others
run once per map class (`EdgeMaps.per_class`).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from . import conv, crop, linear, merge, pointwise, pool, reshape


class Rule(NamedTuple):
    apply: Callable
    reads_edge_maps: bool = False


RULES = {
    "conv": Rule(conv.conv, reads_edge_maps=True),
    "pool": Rule(pool.pool, reads_edge_maps=True),
    "adaptive": Rule(pool.adaptive, reads_edge_maps=True),
    "global": Rule(pool.global_pool, reads_edge_maps=True),
    "linear": Rule(linear.linear, reads_edge_maps=True),
    "crop": Rule(crop.crop, reads_edge_maps=True),
    "pointwise": Rule(pointwise.pointwise),
    "softmax": Rule(pointwise.softmax),
    "merge": Rule(merge.merge),
    "cat": Rule(merge.cat),
    "reshape": Rule(reshape.reshape),
    "transpose": Rule(reshape.transpose),
    "chunk": Rule(reshape.chunk),
    "getitem": Rule(reshape.getitem),
}

__all__ = ["RULES", "Rule"]
