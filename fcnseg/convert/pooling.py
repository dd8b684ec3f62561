"""Pooling nodes of the optimised graph: identity windows dropped, max pooling without indices.

Both are exact: a 1x1 window at stride 1 is its input, and `_max_pool2d` takes the same maxima as
max_pool2d (docs/algorithm.md, "The optimising rewrite").
"""
from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F

from .. import ops
from ..ops import as_pair
from .eager import plain_cpu_window, records_grad

MAX_POOLS = (F.max_pool2d, torch.max_pool2d)


def is_plain_max_pool(node: torch.fx.Node) -> bool:
    """A max_pool2d node as the converter writes it: (x, kernel, stride, padding, dilation)."""
    return node.op == "call_function" and node.target in MAX_POOLS and len(node.args) == 5 and not node.kwargs


def _is_identity_window(node: torch.fx.Node) -> bool:
    """A pooling node whose window is one element and whose divisor is 1: output == input."""
    if node.op != "call_function":
        return False
    if node.target is ops.avg_pool2d_dilated:
        kernel = node.args[1] if len(node.args) > 1 else node.kwargs.get("kernel_size")
        stride = node.args[2] if len(node.args) > 2 else node.kwargs.get("stride", 1)
        divisor = node.args[4] if len(node.args) > 4 else node.kwargs.get("divisor")
        return as_pair(kernel) == (1, 1) and as_pair(stride) == (1, 1) and divisor in (None, 1)
    if node.target in (F.max_pool2d, F.avg_pool2d, torch._C._nn.avg_pool2d):
        kernel = node.args[1] if len(node.args) > 1 else node.kwargs.get("kernel_size")
        stride = node.args[2] if len(node.args) > 2 else node.kwargs.get("stride")
        if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
            stride = kernel                                   # PyTorch's default stride
        divisor = node.args[6] if node.target is not F.max_pool2d and len(node.args) > 6 else \
            node.kwargs.get("divisor_override")
        pad = node.args[3] if len(node.args) > 3 else node.kwargs.get("padding", 0)
        return (as_pair(kernel) == (1, 1) and as_pair(stride) == (1, 1) and as_pair(pad) == (0, 0)
                and divisor in (None, 1))
    return False


def drop_identity_windows(gm: torch.fx.GraphModule) -> int:
    """Remove 1x1 stride-1 pooling nodes in place; returns how many were removed."""
    removed = 0
    for node in list(gm.graph.nodes):
        if _is_identity_window(node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed += 1
    return removed


# Window taps per axis up to which `_max_pool2d` takes maxima of shifted views: faster than
# max_pool2d's CPU kernel for 2x2 windows (docs/benchmarks.md, "Whole pass against its
# convolutions"); larger windows need more passes over the map and keep max_pool2d.
SHIFTED_MAX_TAPS = 2


def _max_pool2d(x, kernel_size, stride, padding, dilation):
    """F.max_pool2d(x, kernel_size, stride, padding, dilation) at stride 1, unpadded.

    max_pool2d computes int64 indices beside its output even in inference, which a dense map
    pays for in memory traffic. In inference on CPU a window of at most SHIFTED_MAX_TAPS taps per
    axis is taken as the maximum of shifted views instead, rows then columns: the same maxima
    (NaN propagates as in max_pool2d), the same values bit for bit, and the output keeps the
    input's layout. With autograd recording, traced or on another device, max_pool2d runs.
    """
    k, d = as_pair(kernel_size), as_pair(dilation)
    ho, wo = x.shape[-2] - (k[0] - 1) * d[0], x.shape[-1] - (k[1] - 1) * d[1]
    if (not plain_cpu_window(x, stride, padding) or max(k) > SHIFTED_MAX_TAPS or k == (1, 1) or x.dim() != 4
            or ho < 1 or wo < 1 or records_grad(x)):
        return F.max_pool2d(x, kernel_size, stride, padding, dilation)
    rows = x[..., :ho, :]
    for i in range(1, k[0]):
        rows = torch.maximum(rows, x[..., i * d[0]:i * d[0] + ho, :])
    out = rows[..., :wo]
    for j in range(1, k[1]):
        out = torch.maximum(out, rows[..., j * d[1]:j * d[1] + wo])
    return out


torch.fx.wrap("_max_pool2d")


def retarget_calls(gm: torch.fx.GraphModule, matches, target) -> int:
    """Make every node for which matches(node) call `target` with the same arguments; returns the count."""
    count = 0
    for node in gm.graph.nodes:
        if matches(node):
            node.target = target
            count += 1
    return count


def index_free_max_pooling(gm: torch.fx.GraphModule) -> int:
    """Route every plain max_pool2d node through `_max_pool2d` (which decides per call); returns the count."""
    return retarget_calls(gm, is_plain_max_pool, _max_pool2d)
