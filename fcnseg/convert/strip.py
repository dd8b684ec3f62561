"""`strip_padding`: the same classifier without internal zero padding, and the patch size it needs.

Removing padding makes the network "valid" (docs/algorithm.md, "Padding inside the network"): each layer only sees real
input, so one dense pass reproduces every patch exactly. Branches that meet in an addition or a
concatenation then shrink by different amounts; they are centre-cropped to the smallest, as in U-Net.
"""
from __future__ import annotations

import copy

import torch
import torch.fx
from torch import nn

from .. import ops
from .dense_graph import convert
from .errors import ConversionError, PatchSizeError
from .layers import describe
from .trace import HeadMismatch, infer_in_channels, patch_values, trace

_PAD_ARG = {"conv": (4, "padding"), "pool": (3, "padding")}
_MAX_PATCH = 4096


def _run(gm, c, size):
    """'small' if a layer's input is too small or the head gets too few features, 'large' if it gets
    too many, else the node values."""
    try:
        return patch_values(gm, c, size)
    except HeadMismatch as exc:
        return "small" if exc.got < exc.want else "large"
    except RuntimeError:
        return "small"


def _works(gm, c, size):
    values = _run(gm, c, size)
    if isinstance(values, str):
        return values
    try:
        conv = convert(gm, values, size, (1, 1))
    except PatchSizeError:
        return "unfit"
    # partial ceil-mode windows convert exactly, but through edge maps (a few times the cost, and
    # not after a squeeze-excitation gate): a chosen patch size is one where every window fits
    return "partial" if conv.partial_windows else "ok"


def find_patch_size(model: nn.Module, in_channels: int | None = None) -> tuple[int, int]:
    """The smallest square patch for which the classifier runs, its head gets exactly the features it
    expects, its output is 1x1 and every pooling window fits."""
    gm = trace(model)
    c = in_channels or infer_in_channels(gm)
    lo, hi = 1, _MAX_PATCH
    while lo < hi:                                    # "runs at all" is monotone in the patch size
        mid = (lo + hi) // 2
        if _run(gm, c, (mid, mid)) == "small":
            lo = mid + 1
        else:
            hi = mid
    for size in range(lo, min(lo + 512, _MAX_PATCH)):
        verdict = _works(gm, c, (size, size))
        if verdict == "ok":
            return (size, size)
        if verdict == "large":
            break
    raise PatchSizeError(f"no patch size from {lo} works for {type(model).__name__}: check that its head "
                         "matches its body")


def nearby_patch_sizes(model: nn.Module, in_channels: int, patch_size, count: int = 4) -> list:
    gm = trace(model)
    p, q = patch_size
    found = []
    for dp in sorted(range(-48, 49), key=abs):
        size = (p + dp, q + dp)
        if min(size) >= 1 and _works(gm, in_channels, size) == "ok":
            found.append(size)
            if len(found) == count:
                break
    return sorted(found)


def _sample_values(gm, c, model):
    for size in (getattr(model, "patch_size", None), 224, 299, 256, 512, 96, 64, 32, 15):
        if size is None:
            continue
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        values = _run(gm, c, size)
        if not isinstance(values, str):
            return values
    raise ConversionError(f"{type(model).__name__} runs on none of the usual input sizes; pass a valid model")


def strip_padding(model: nn.Module, *, in_channels: int | None = None):
    """(valid_model, patch_size): shared parameters, no internal zero padding, branches cropped."""
    src = trace(model)
    c = in_channels or infer_in_channels(src)
    values = _sample_values(src, c, model)
    graph = torch.fx.Graph()
    remap = {}
    graph.output(graph.graph_copy(src.graph, remap))
    gm = torch.fx.GraphModule(src, graph, class_name=f"Valid{type(model).__name__}")
    old_of = {new: old for old, new in remap.items()}
    for node in list(gm.graph.nodes):
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        old = old_of[node]
        layer = describe(src, old)
        if layer.kind in ("conv", "pool") and any(layer.padding):
            _unpad(gm, node, layer)
        elif layer.kind in ("merge", "cat"):
            # broadcast operands (squeeze-excitation scales, 1x1) are left alone
            tensors = [a for a in (node.args[0] if layer.kind == "cat" else node.all_input_nodes)
                       if isinstance(values.get(old_of.get(a)), torch.Tensor) and values[old_of[a]].dim() == 4
                       and tuple(values[old_of[a]].shape[-2:]) != (1, 1)]
            if len(tensors) > 1:
                _crop_branches(gm.graph, node, tensors)
    gm.recompile()
    gm.patch_size = find_patch_size(gm, c)
    # GraphModule's deepcopy rebuilds the module and keeps only attributes listed here
    key = getattr(torch.fx.graph_module, "_USER_PRESERVED_ATTRIBUTES_KEY", "_user_preserved_attributes")
    gm.meta.setdefault(key, {})["patch_size"] = gm.patch_size
    return gm, gm.patch_size


def _unpad(gm, node, layer):
    if node.op == "call_module":
        parent, _, leaf = node.target.rpartition(".")
        m = copy.copy(gm.get_submodule(node.target))   # shallow: the same Parameter objects
        m.padding = 0 if not isinstance(m, nn.Conv2d) else (0, 0)
        if isinstance(m, nn.Conv2d):
            m._reversed_padding_repeated_twice = [0, 0, 0, 0]
        gm.get_submodule(parent).add_module(leaf, m) if parent else gm.add_module(leaf, m)
        return
    idx, key = _PAD_ARG[layer.kind]
    if key in node.kwargs:
        node.kwargs = {**node.kwargs, key: 0}
    else:
        args = list(node.args)
        args[idx] = 0
        node.args = tuple(args)


def _crop_branches(graph, node, tensors):
    with graph.inserting_before(node):
        cropped = {t: graph.call_function(ops.crop_to_smallest, (t, *[o for o in tensors if o is not t]))
                   for t in tensors}
    node.args = torch.fx.node.map_arg(node.args, lambda n: cropped.get(n, n))
    node.kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: cropped.get(n, n))
