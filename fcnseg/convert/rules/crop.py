"""Centre crops of a branch to the smallest (`fcnseg.ops.crop_to_smallest`, from strip_padding).

A crop of c cells at rate r is a shift of c*r dense rows: (*) holds for the cropped map."""
from __future__ import annotations

import operator

from ...geometry import Geo


def crop(cv, node, layer):
    cv.edges.per_class(node, layer, crop_map)
    h_in, h_out = cv.values[node.args[0]].shape[-2:], cv.values[node].shape[-2:]
    # the cropped map's last position is the input's last one only where nothing is cut at the
    # bottom/right; a 1x1 crop has no interior
    cv.edges.pick_class(node, [0 if h_in[a] - h_out[a] - (h_in[a] - h_out[a]) // 2 else 1 if h_out[a] == 1
                               else None for a in range(2)])


def crop_map(cv, node, layer):
    x = node.args[0]
    geo = cv.geo[x]
    h_in, h_out = cv.values[x].shape[-2:], cv.values[node].shape[-2:]
    top, left = (h_in[0] - h_out[0]) // 2, (h_in[1] - h_out[1]) // 2
    r = geo.r
    idx = (Ellipsis, slice(top * r[0], None), slice(left * r[1], None))
    cv.env[node] = cv.graph.call_function(operator.getitem, (cv.env[x], idx))
    off = (geo.offset[0] + top * geo.d[0], geo.offset[1] + left * geo.d[1])
    cv.geo[node] = Geo("map", tuple(h_out), geo.d, geo.g, geo.rf, off)
