"""The conversion pass: visit the traced classifier node by node and record its dense graph.

Notation (docs/algorithm.md, "The output stride grid"). At a node whose original cumulative
stride is d, the dense map keeps strides up to g = min(d, s) (its "grid" stride) and dilates by
r = d / g. For the patch of output pixel (m*s, n*s), feature (a, b) of the node is

    dense[m*s/g + a*r, n*s/g + b*r]                                   (*)

The pass keeps the environment (each node's dense value and its `Geo`), and hands every layer to
the rule of its kind (`rules.RULES`); every rule keeps (*) true. Rows past the end of a map belong
to no output pixel and are trimmed where maps meet. The patch-network shapes come from one run on
the meta device (`trace.patch_values`). Partial ceil-mode windows: `edge_maps.py`; the layers
after a squeeze-excitation gate: `per_patch.py`; permuted flattens: `layout.py`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx

from ..geometry import Geo, LayerGeometry
from .edge_maps import EdgeMaps
from .errors import OutputStrideError, PatchSizeError, UnsupportedLayerError
from .layers import Layer, describe
from .layout import Layout
from .per_patch import build_per_patch_tail, find_per_patch
from .rules import RULES


@dataclass
class Conversion:
    graph: torch.fx.Graph
    attrs: dict                # target name -> module / parameter used by the graph
    layers: list
    out_geo: Geo
    num_classes: int
    unsafe: list = field(default_factory=list)   # (name, module) refused in training mode
    per_patch_tail: torch.fx.Graph | None = None  # layers after a squeeze-excitation gate (per_patch.py)
    tail_inputs: list = field(default_factory=list)  # Geo of each dense tensor the per-patch tail gathers
    partial_windows: bool = False  # some ceil-mode window is partial at this patch size (edge maps built)


class Converter:
    """The pass. State the rules read and write:

    env: node -> its value in the dense graph being recorded (`graph`);
    geo: node -> its `Geo` (kind, patch-network size, strides, receptive field, offset);
    edges: the edge maps of partial windows; layout: spatial dims permuted before a flatten;
    attrs: the classifier's modules and tensors the dense graph reads; layers: per-layer geometry.
    """

    def __init__(self, gm: torch.fx.GraphModule, values: dict, patch_size, output_stride):
        self.gm, self.values = gm, values
        self.patch_size = tuple(patch_size)
        self.output_stride = output_stride
        self.graph = self.dense_graph = torch.fx.Graph()
        self.env, self.geo, self.attrs = {}, {}, {}
        self.layers, self.unsafe = [], []
        self.edges = EdgeMaps(self)
        self.layout = Layout()
        self.per_patch = find_per_patch(gm, values)
        self.scratch, self.scratch_env, self.dense_env = torch.fx.Graph(), {}, self.env
        self.current = None

    # ---- what the rules use ---------------------------------------------------------------------
    def val(self, n):
        """A node's value in the patch network (shapes only), or a literal argument as it is."""
        return self.values[n] if isinstance(n, torch.fx.Node) else n

    def map_args(self, args):
        """Arguments with every node replaced by its dense value."""
        return torch.fx.node.map_arg(args, lambda n: self.env[n])

    def copy_node(self, node, replace=None):
        """The node itself in the dense graph, reading the dense values of its inputs."""
        replace = replace or {}
        return self.graph.node_copy(node, lambda n: replace.get(n, self.env[n]))

    def attr(self, target):
        """A get_attr node for the classifier's own tensor (gradients land on it)."""
        obj = self.gm
        for part in target.split("."):
            obj = getattr(obj, part)
        self.attrs[target] = obj
        return self.graph.get_attr(target)

    def module(self, target):
        """Make the classifier's submodule `target` callable from the dense graph."""
        self.attrs[target] = self.gm.get_submodule(target)

    def tensor_inputs(self, node):
        return [a for a in node.all_input_nodes if self.geo[a].kind in ("map", "flat")]

    def step(self, geo: Geo, stride, name):
        """Stride kept in the dense layer, and the grid after it (keeps (*) true)."""
        t1, g_out = [], []
        for ax in range(2):
            d_in, g_in, t, s = geo.d[ax], geo.g[ax], stride[ax], self.output_stride[ax]
            d_out = d_in * t
            g = min(d_out, s)
            if g % g_in or t % (g // g_in) or d_out % g:
                raise OutputStrideError(
                    f"output_stride {self.output_stride} is not reachable at layer '{name}' (cumulative stride "
                    f"{geo.d} -> {d_in * stride[0], d_in * stride[1]})")
            t1.append(g // g_in)
            g_out.append(g)
        return tuple(t1), tuple(g_out)

    def record(self, layer: Layer, geo_out: Geo, t1, dil, flops_per_out, out_hw, dense_factor=1.0):
        """The layer's row of the geometry table (strides, dilation, FLOPs per patch and dense)."""
        s = self.output_stride
        positions = (s[0] // geo_out.g[0]) * (s[1] // geo_out.g[1]) * dense_factor
        if self.current in self.per_patch:            # runs once per output pixel, at patch size
            positions = out_hw[0] * out_hw[1]
        self.layers.append(LayerGeometry(
            layer.name, layer.kind if layer.kind != "pool" else f"{layer.pool}pool", layer.kernel, layer.stride,
            tuple(out_hw), geo_out.d, t1, dil, geo_out.rf, geo_out.offset,
            int(flops_per_out * out_hw[0] * out_hw[1]), int(flops_per_out * positions)))

    # ---- the pass ---------------------------------------------------------------------------------
    def run(self) -> Conversion:
        for node in self.gm.graph.nodes:
            self.current = node
            if node in self.per_patch:
                # geometry and checks as usual; the emitted ops are discarded (the tail is rebuilt
                # from the original nodes by per_patch.build_per_patch_tail)
                self.graph, self.env = self.scratch, self.scratch_env
                for a in node.all_input_nodes:
                    if a not in self.scratch_env:
                        self.scratch_env[a] = self.scratch.placeholder(a.name)
                self.visit(node)
                self.dense_env[node] = self.scratch_env[node]
                self.graph, self.env = self.dense_graph, self.dense_env
            else:
                self.visit(node)
        return Conversion(self.graph, self.attrs, self.layers, self.out_geo, self.num_classes, self.unsafe,
                          self.per_patch_tail, [self.geo[b] for b in self.tail_inputs], self.edges.partial_windows)

    def visit(self, node):
        if node.op == "placeholder":
            if self.env:
                raise UnsupportedLayerError(f"forward() takes more than one input ('{node.name}'); "
                                            "a patch classifier takes one tensor (N, C, P, Q)")
            self.env[node] = self.graph.placeholder("x")
            self.geo[node] = Geo("map", self.patch_size)
            return
        if node.op == "get_attr":
            self.env[node] = self.attr(node.target)
            self.geo[node] = Geo("const")
            return
        if node.op == "output":
            return self.output(node)
        val = self.values[node]
        if not isinstance(val, torch.Tensor) and not (isinstance(val, (tuple, list)) and val and
                                                         isinstance(val[0], torch.Tensor)):
            # shape arithmetic (x.size(0), channels // groups): evaluated on the dense tensors
            self.env[node] = self.copy_node(node)
            self.geo[node] = Geo("shape")
            return
        if not node.all_input_nodes or all(self.geo[a].kind in ("const", "shape") for a in node.all_input_nodes):
            self.env[node] = self.copy_node(node)
            if node.op == "call_module":
                self.module(node.target)
            self.geo[node] = Geo("const")
            return
        layer = describe(self.gm, node)
        rule = RULES.get(layer.kind)
        if rule is None:
            why = layer.extra.get("why") or f"a {layer.kind} operation on feature maps has no dense form"
            raise UnsupportedLayerError(f"layer '{layer.name}' cannot be converted exactly: {why}")
        self.layout.check(node, layer)
        if rule.reads_edge_maps:
            rule.apply(self, node, layer)
        else:
            self.edges.per_class(node, layer, rule.apply)

    def output(self, node):
        """One per-patch output, or a tuple/list/dict of them (several heads): the same structure
        of dense maps, each checked alone."""
        out = node.args[0]
        leaves = []
        torch.fx.node.map_aggregate(out, lambda a: leaves.append(a))
        if not leaves or any(not isinstance(a, torch.fx.Node) for a in leaves):
            raise UnsupportedLayerError("the classifier returns something other than tensors of class scores "
                                        "(a tensor (N, K) or (N, K, 1, 1), or a tuple, list or dict of them)")
        for a in leaves:
            geo, shape = self.geo[a], tuple(self.values[a].shape)
            if not (geo.kind == "flat" and len(shape) == 2 and geo.hw == (1, 1)) and \
                    not (geo.kind == "map" and len(shape) == 4 and shape[2:] == (1, 1)):
                which = "" if len(leaves) == 1 else f" output '{a.name}' of"
                raise PatchSizeError(
                    f"for patch size {self.patch_size}{which} the classifier returns shape {shape}; a patch "
                    "classifier must return (N, K) or (N, K, 1, 1): choose the patch size that gives a 1x1 output "
                    "(fcnseg.strip_padding and fcnseg.geometry_of compute it)")
            if geo.g != self.output_stride:
                raise OutputStrideError(
                    f"output_stride {self.output_stride} exceeds the network's total stride {geo.d}")
            assert not self.edges.is_split(a), "a 1x1 output has no edge map"
        first = self.geo[leaves[0]]
        rf = tuple(max(self.geo[a].rf[ax] for a in leaves) for ax in range(2))
        self.out_geo = Geo(first.kind, first.hw, first.d, first.g, rf, first.offset)
        self.num_classes = int(self.values[leaves[0]].shape[1])     # of the first head
        self.per_patch_tail, self.tail_inputs = None, []
        if any(a in self.per_patch for a in leaves):
            self.per_patch_tail, self.tail_inputs = build_per_patch_tail(self, out, leaves)
        else:
            self.graph.output(self.map_args(out))


def convert(gm, values, patch_size, output_stride) -> Conversion:
    return Converter(gm, values, patch_size, output_stride).run()
