"""Classifiers with several outputs: name their heads and pick one.

A patch classifier may return a tuple, list or dict of per-patch tensors (class scores and a
box regression, say); `fcnseg.densify` then returns the same structure of dense maps.
Tools that need one score map (labelling, export, a scores file) take a head:

    fcnseg.heads.output_heads(model, in_channels=3)    # {'prob': 2, 'box': 4}: name -> channels
    dense = fcnseg.densify(fcnseg.heads.OneHead(model, "box"))   # only that head is computed
    dense = fcnseg.densify(fcnseg.heads.AllHeads(model))   # every head, channels concatenated

A head is a dict key, or an index into the tuple/list (or into the dict's keys, in order).
"""
from __future__ import annotations

import torch
import torch.fx
from torch import nn


def _keys(out) -> list:
    if isinstance(out, (torch.Tensor, torch.Size)):
        return [None]
    if isinstance(out, dict):
        return list(out)
    if isinstance(out, (tuple, list)):
        return list(range(len(out)))
    return [None]


def resolve_head(keys: list, head):
    """The key of `head` (a key, an index, or its decimal string) among `keys`; clear error otherwise."""
    if keys == [None]:
        if head in (None, 0, "0"):
            return None
        raise ValueError(f"head={head!r}: the classifier has one output; leave head unset")
    if head is None:
        return keys[0]
    if head in keys:
        return head
    index = head
    if isinstance(head, str) and head.lstrip("-").isdigit():
        index = int(head)
    if isinstance(index, int) and not isinstance(index, bool) and -len(keys) <= index < len(keys):
        return keys[index]
    raise ValueError(f"head={head!r} is not an output of the classifier; its heads are {keys} "
                     "(a name or an index)")


def select_head(out, head):
    """One head of an output structure (the output itself when there is only one)."""
    key = resolve_head(_keys(out), head)
    return out if key is None else out[key]


def output_heads(model: nn.Module, patch_size=None, *, in_channels: int | None = None) -> dict:
    """{head: channels} of a classifier's per-patch outputs, from shapes alone (meta device).
    A one-output classifier gives {None: K}."""
    from .convert.trace import infer_in_channels, patch_values, trace
    from .patch import resolve_patch_size

    gm = trace(model)
    values = patch_values(gm, in_channels or infer_in_channels(gm), resolve_patch_size(model, patch_size))
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    shapes = torch.fx.node.map_aggregate(out, lambda a: values[a].shape if isinstance(a, torch.fx.Node) else a)
    def channels(shape):      # a nested structure under one key has no single channel count
        return int(shape[1]) if isinstance(shape, torch.Size) else None
    return {key: channels(shapes if key is None else shapes[key]) for key in _keys(shapes)}


class AllHeads(nn.Module):
    """The classifier with its heads' scores concatenated along the channels, in head order
    (`channels`: head -> (first, end) channel); a one-output patch classifier for tools that
    store one score array. Each head must be one tensor (N, K) or (N, K, 1, 1)."""

    def __init__(self, classifier: nn.Module, heads: dict):
        super().__init__()
        self.classifier = classifier
        if any(k is None for k in heads.values()):
            raise ValueError(f"every head must be one tensor of scores; got channel counts {heads}")
        starts = [sum(list(heads.values())[:i]) for i in range(len(heads))]
        self.channels = {key: (a, a + k) for (key, k), a in zip(heads.items(), starts)}
        if getattr(classifier, "patch_size", None) is not None:
            self.patch_size = classifier.patch_size

    def forward(self, x):
        out = self.classifier(x)
        return torch.cat([out[key].flatten(1) for key in self.channels], 1)


class OneHead(nn.Module):
    """The classifier restricted to one head: a one-output patch classifier sharing its parameters.
    Densifying it traces only the layers that head needs."""

    def __init__(self, classifier: nn.Module, head=None):
        super().__init__()
        self.classifier = classifier
        self.head = head
        if getattr(classifier, "patch_size", None) is not None:
            self.patch_size = classifier.patch_size

    def forward(self, x):
        return select_head(self.classifier(x), self.head)
