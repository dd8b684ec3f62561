"""Squeeze-excitation tails: the layers after a patch-global gate run per patch.

A squeeze-excitation block pools a map over the whole patch and multiplies the resulting
per-channel gate back over the map. Each patch scales its own map differently, so from the gate
on no dense map can hold the features of all patches (docs/algorithm.md, "Squeeze-excitation
gates: the per-patch tail"). The dense graph computes every map up to the gate; the tail (an fx
graph of the original layers) runs on each output pixel's features gathered from those maps:
exact, at the patch-by-patch cost of the tail layers only.
"""
from __future__ import annotations

import torch
import torch.fx

from .errors import PartialWindowError


def find_per_patch(gm: torch.fx.GraphModule, values: dict) -> set:
    """Nodes that depend on a value pooled over the whole patch and broadcast back over a map."""
    live = set()                                     # nodes computed from the input image
    for n in gm.graph.nodes:
        if n.op == "placeholder" or any(a in live for a in n.all_input_nodes):
            live.add(n)
    starts = set()
    for n in gm.graph.nodes:
        maps = [a for a in n.all_input_nodes if a in live and isinstance(values.get(a), torch.Tensor)
                and values[a].dim() == 4]
        sizes = {tuple(values[a].shape[-2:]) for a in maps}
        if len(sizes) > 1 and (1, 1) in sizes:
            starts.add(n)
    tail = set()
    for n in gm.graph.nodes:                   # topological order: one pass finds descendants
        if n in starts or any(a in tail for a in n.all_input_nodes):
            tail.add(n)
    tail.discard(next(n for n in gm.graph.nodes if n.op == "output"))
    return tail


def build_per_patch_tail(cv, out, leaves):
    """The per-patch tail of converter `cv`: the original nodes, fed with features gathered from
    dense maps. Records the dense graph's output (the maps the tail gathers) and returns
    (tail graph, the nodes whose dense maps it gathers, in the order of its inputs)."""
    need = set(cv.per_patch)
    # an output computed densely (another head) passes through the tail as a gathered input
    tail_inputs = [a for a in leaves if a not in need]

    def visit_inputs(n):
        for a in n.all_input_nodes:
            if a in need:
                continue
            if cv.geo[a].kind in ("map", "flat") and a not in tail_inputs:
                tail_inputs.append(a)
            elif cv.geo[a].kind in ("shape", "const"):
                need.add(a)                    # recomputed on per-patch tensors
                visit_inputs(a)

    for n in list(cv.per_patch):
        visit_inputs(n)
    g, env = torch.fx.Graph(), {}
    for b in tail_inputs:
        env[b] = g.placeholder(b.name)
    for n in cv.gm.graph.nodes:
        if n in need and n not in env:
            env[n] = g.node_copy(n, lambda a: env[a])
            if n.op == "call_module":
                cv.module(n.target)
            elif n.op == "get_attr":
                cv.attr(n.target)
    for b in tail_inputs:
        if cv.edges.is_split(b):
            raise PartialWindowError(
                f"the per-patch layers after a squeeze-excitation gate read '{b.name}', a map with partial "
                "ceil-mode windows: this combination has no exact dense form; choose a patch size for which "
                "every pooling window fits")
    g.output(torch.fx.node.map_arg(out, lambda a: env[a]))
    cv.dense_graph.output(tuple(cv.dense_env[b] for b in tail_inputs))
    return g, tail_inputs
