"""Build the dense graph: strides set to 1, kernels dilated by the cumulative stride.

Notation (docs/algorithm.md, "The output stride grid"). At a node whose original
cumulative stride is d, the dense map keeps strides up to g = min(d, s) (its "grid" stride) and
dilates by r = d / g. For the patch of output pixel (m*s, n*s), feature (a, b) of the node is

    dense[m*s/g + a*r, n*s/g + b*r]                                   (*)

Every rule below keeps (*) true; rows past the end of a map belong to no output pixel and are
trimmed where maps meet. The patch-network shapes come from one run on the meta device.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..geometry import Geo, LayerGeometry
from .errors import OutputStrideError, PaddingError, PartialWindowError, PatchSizeError, UnsupportedLayerError
from .layers import PER_FEATURE_MODULES, POINTWISE_METHODS, TRAIN_MODE_UNSAFE, Layer, describe

STRIP_HINT = ("use `valid_model, patch_size = fcnseg.strip_padding(model)` to remove internal padding "
              "(the network becomes 'valid' and its patch grows), then densify valid_model")


@dataclass
class Conversion:
    graph: torch.fx.Graph
    attrs: dict                # target name -> module / parameter used by the graph
    layers: list
    out_geo: Geo
    num_classes: int
    unsafe: list = field(default_factory=list)   # (name, module) refused in training mode
    per_patch_tail: torch.fx.Graph | None = None  # layers after a squeeze-excitation gate (Converter._find_per_patch)
    tail_inputs: list = field(default_factory=list)  # Geo of each dense tensor the per-patch tail gathers
    partial_windows: bool = False  # some ceil-mode window is partial at this patch size (edge maps built)


# layers that read their input's edge maps (partial windows) themselves; the rest run per map class
WINDOW_KINDS = ("conv", "pool", "adaptive", "global", "linear", "crop")
IDENTITY_4D = (0, 1, 2, 3)


def _mul(a, b):
    return (a[0] * b[0], a[1] * b[1])


def _layout_free(node, layer) -> bool:
    """An elementwise layer without per-channel parameters: indifferent to the order of the dims."""
    if node.op == "call_method":
        return node.target in POINTWISE_METHODS
    if node.op == "call_function":
        return node.target not in (F.prelu, F.local_response_norm, F.batch_norm, torch.batch_norm)
    m = layer.module
    return not isinstance(m, (nn.LocalResponseNorm, nn.Dropout2d)) and not any(True for _ in m.parameters()) \
        and not any(True for _ in m.buffers())


class Converter:
    def __init__(self, gm: torch.fx.GraphModule, values: dict, patch_size, output_stride):
        self.gm, self.values = gm, values
        self.patch_size = tuple(patch_size)
        self.s = output_stride
        self.graph = self.dense_graph = torch.fx.Graph()
        self.env, self.geo, self.attrs = {}, {}, {}
        self.layers, self.unsafe = [], []
        # edge maps of partial windows (docs/algorithm.md, "Ceil-mode pooling with partial last
        # windows"): per axis (rows, cols) whether a node keeps a second map for the patch's last
        # position, and its maps by class, (0, 0) being env[node]
        self.split, self.variants = {}, {}
        self.partial_windows = False
        self.layout = {}             # node -> (order of its dims in the patch network, permuting layer)
        self.per_patch = self._find_per_patch()
        self.scratch, self.scratch_env, self.dense_env = torch.fx.Graph(), {}, self.env
        self._current = None

    def _find_per_patch(self) -> set:
        """Nodes that depend on a value pooled over the whole patch and broadcast back over a map
        (squeeze-excitation). Each patch scales its own map differently, so from there on no dense
        map can hold the features of all patches: those nodes run per patch, on features gathered
        from the dense maps (exact; the cost of those layers is the patch-by-patch cost)."""
        live = set()                                     # nodes computed from the input image
        for n in self.gm.graph.nodes:
            if n.op == "placeholder" or any(a in live for a in n.all_input_nodes):
                live.add(n)
        starts = set()
        for n in self.gm.graph.nodes:
            maps = [a for a in n.all_input_nodes if a in live and isinstance(self.values.get(a), torch.Tensor)
                    and self.values[a].dim() == 4]
            sizes = {tuple(self.values[a].shape[-2:]) for a in maps}
            if len(sizes) > 1 and (1, 1) in sizes:
                starts.add(n)
        tail = set()
        for n in self.gm.graph.nodes:                   # topological order: one pass finds descendants
            if n in starts or any(a in tail for a in n.all_input_nodes):
                tail.add(n)
        tail.discard(next(n for n in self.gm.graph.nodes if n.op == "output"))
        return tail


    # ---- helpers -------------------------------------------------------------------------
    def _val(self, n):
        return self.values[n] if isinstance(n, torch.fx.Node) else n

    def _map(self, args):
        return torch.fx.node.map_arg(args, lambda n: self.env[n])

    def _attr(self, target):
        obj = self.gm
        for part in target.split("."):
            obj = getattr(obj, part)
        self.attrs[target] = obj          # the classifier's own tensor: gradients land on it
        return self.graph.get_attr(target)

    def _module(self, target):
        self.attrs[target] = self.gm.get_submodule(target)

    def _tensor_inputs(self, node):
        return [a for a in node.all_input_nodes if self.geo[a].kind in ("map", "flat")]

    def _step(self, geo: Geo, stride, name):
        """Stride kept in the dense layer, and the grid after it (keeps (*) true)."""
        t1, g_out = [], []
        for ax in range(2):
            d_in, g_in, t, s = geo.d[ax], geo.g[ax], stride[ax], self.s[ax]
            d_out = d_in * t
            g = min(d_out, s)
            if g % g_in or t % (g // g_in) or d_out % g:
                raise OutputStrideError(
                    f"output_stride {self.s} is not reachable at layer '{name}' (cumulative stride "
                    f"{geo.d} -> {d_in * stride[0], d_in * stride[1]})")
            t1.append(g // g_in)
            g_out.append(g)
        return tuple(t1), tuple(g_out)

    def _record(self, layer: Layer, geo_in: Geo, geo_out: Geo, t1, dil, flops_per_out, out_hw, dense_factor=1.0):
        positions = (self.s[0] // geo_out.g[0]) * (self.s[1] // geo_out.g[1]) * dense_factor
        if self._current in self.per_patch:            # runs once per output pixel, at patch size
            positions = out_hw[0] * out_hw[1]
        self.layers.append(LayerGeometry(
            layer.name, layer.kind if layer.kind != "pool" else f"{layer.pool}pool", layer.kernel, layer.stride,
            tuple(out_hw), geo_out.d, t1, dil, geo_out.rf, geo_out.offset,
            int(flops_per_out * out_hw[0] * out_hw[1]), int(flops_per_out * positions)))

    # ---- the pass ----------------------------------------------------------------------------
    def run(self) -> Conversion:
        for node in self.gm.graph.nodes:
            self._current = node
            if node in self.per_patch:
                # geometry and checks as usual; the emitted ops are discarded (the tail is rebuilt
                # from the original nodes in _build_per_patch_tail)
                self.graph, self.env = self.scratch, self.scratch_env
                for a in node.all_input_nodes:
                    if a not in self.scratch_env:
                        self.scratch_env[a] = self.scratch.placeholder(a.name)
                self._visit(node)
                self.dense_env[node] = self.scratch_env[node]
                self.graph, self.env = self.dense_graph, self.dense_env
            else:
                self._visit(node)
        return Conversion(self.graph, self.attrs, self.layers, self.out_geo, self.num_classes, self.unsafe,
                          self.per_patch_tail, [self.geo[b] for b in self.tail_inputs], self.partial_windows)

    def _build_per_patch_tail(self, out, leaves):
        """The per-patch tail: the original nodes, fed with features gathered from dense maps."""
        need, tail_inputs = set(self.per_patch), []
        # an output computed densely (another head) passes through the tail as a gathered input
        tail_inputs += [a for a in leaves if a not in need]

        def visit_inputs(n):
            for a in n.all_input_nodes:
                if a in need:
                    continue
                if self.geo[a].kind in ("map", "flat") and a not in tail_inputs:
                    tail_inputs.append(a)
                elif self.geo[a].kind in ("shape", "const"):
                    need.add(a)                    # recomputed on per-patch tensors
                    visit_inputs(a)

        for n in list(self.per_patch):
            visit_inputs(n)
        g, env = torch.fx.Graph(), {}
        for b in tail_inputs:
            env[b] = g.placeholder(b.name)
        for n in self.gm.graph.nodes:
            if n in need and n not in env:
                env[n] = g.node_copy(n, lambda a: env[a])
                if n.op == "call_module":
                    self._module(n.target)
                elif n.op == "get_attr":
                    self._attr(n.target)
        for b in tail_inputs:
            if b in self.split:
                raise PartialWindowError(
                    f"the per-patch layers after a squeeze-excitation gate read '{b.name}', a map with partial "
                    "ceil-mode windows: this combination has no exact dense form; choose a patch size for which "
                    "every pooling window fits")
        g.output(torch.fx.node.map_arg(out, lambda a: env[a]))
        self.dense_graph.output(tuple(self.dense_env[b] for b in tail_inputs))
        self.per_patch_tail, self.tail_inputs = g, tail_inputs

    def _visit(self, node):
        if node.op == "placeholder":
            if self.env:
                raise UnsupportedLayerError(f"forward() takes more than one input ('{node.name}'); "
                                            "a patch classifier takes one tensor (N, C, P, Q)")
            self.env[node] = self.graph.placeholder("x")
            self.geo[node] = Geo("map", self.patch_size)
            return
        if node.op == "get_attr":
            self.env[node] = self._attr(node.target)
            self.geo[node] = Geo("const")
            return
        if node.op == "output":
            return self._output(node)
        val = self.values[node]
        if not isinstance(val, torch.Tensor) and not (isinstance(val, (tuple, list)) and val and
                                                         isinstance(val[0], torch.Tensor)):
            # shape arithmetic (x.size(0), channels // groups): evaluated on the dense tensors
            self.env[node] = self.graph.node_copy(node, lambda n: self.env[n])
            self.geo[node] = Geo("shape")
            return
        if not node.all_input_nodes or all(self.geo[a].kind in ("const", "shape") for a in node.all_input_nodes):
            self.env[node] = self.graph.node_copy(node, lambda n: self.env[n])
            if node.op == "call_module":
                self._module(node.target)
            self.geo[node] = Geo("const")
            return
        layer = describe(self.gm, node)
        handler = getattr(self, f"_{layer.kind}", None)
        if node.op == "call_function" and node.target is operator.getitem:
            handler = self._getitem
        if handler is None:
            raise UnsupportedLayerError(f"layer '{layer.name}' cannot be converted exactly: {layer.extra.get('why')}")
        self._check_layout(node, layer)
        if layer.kind in WINDOW_KINDS:
            handler(node, layer)                 # reads its input's edge maps itself
        else:
            self._per_variant(node, layer, handler)

    # ---- edge maps of partial windows ------------------------------------------------------------
    @staticmethod
    def _keys(split):
        """The map classes of a node: per axis 0 (interior) and, where split, 1 (last position)."""
        return [(cy, cx) for cy in ((0, 1) if split[0] else (0,)) for cx in ((0, 1) if split[1] else (0,))]

    def _var(self, n, key):
        """The dense map that holds node n's features of class key (an unsplit axis has one map)."""
        if n not in self.split:
            return self.env[n]
        sy, sx = self.split[n]
        return self.variants[n][(key[0] if sy else 0, key[1] if sx else 0)]

    def _set_variants(self, node, split, variants):
        self.env[node] = variants[(0, 0)]
        if any(split):
            self.partial_windows = True
            self.split[node], self.variants[node] = tuple(split), variants
        else:
            self.split.pop(node, None)
            self.variants.pop(node, None)

    def _per_variant(self, node, layer, handler):
        """A layer that treats every position alike runs once per map class of its inputs."""
        inputs = [a for a in node.all_input_nodes if a in self.split]
        if inputs and node in self.per_patch:
            raise PartialWindowError(
                f"layer '{layer.name}' runs per patch after a patch-global gate (squeeze-excitation) and reads a "
                f"map with partial ceil-mode windows ('{inputs[0].name}'): this combination has no exact dense form; "
                "choose a patch size for which every pooling window fits")
        handler(node, layer)
        if not inputs:
            return
        split = tuple(any(self.split[a][ax] for a in inputs) for ax in range(2))
        saved, variants = {a: self.env[a] for a in inputs}, {(0, 0): self.env[node]}
        for key in self._keys(split)[1:]:
            for a in inputs:
                self.env[a] = self._var(a, key)
            handler(node, layer)
            variants[key] = self.env[node]
        self.env.update(saved)
        self._set_variants(node, split, variants)

    def _pick_class(self, node, pick):
        """Axes with pick[ax] in (0, 1) become unsplit, keeping the map of that class."""
        if node not in self.split:
            return
        split = self.split[node]
        new = tuple(split[ax] and pick[ax] is None for ax in range(2))
        variants = {key: self.variants[node][tuple(pick[ax] if split[ax] and pick[ax] is not None else key[ax]
                                                   for ax in range(2))] for key in self._keys(new)}
        self._set_variants(node, new, variants)

    def _plan(self, layer, x, n_in, n_out):
        """Per axis: whether the output keeps an edge map, and per output class the tap groups
        [(first tap, end tap, input class)] its windows combine (docs/algorithm.md).

        Only a layer's last window can be partial (ceil_mode), and only it can read the input's last
        position; every other window reads interior positions through all k taps."""
        split_in = self.split.get(x, (False, False))
        split_out, groups = [], []
        for ax in range(2):
            k, t, dl = layer.kernel[ax], layer.stride[ax], layer.dilation[ax]
            rest = n_in[ax] - 1 - (n_out[ax] - 1) * t       # first tap of the last window -> end of the map
            if rest < 0:
                raise PatchSizeError(f"layer '{layer.name}': with patch size {self.patch_size} its last window "
                                     f"starts past the edge of its {tuple(n_in)} input")
            k_last = min(k, rest // dl + 1)                 # taps of the last window inside the map
            hit = split_in[ax] and rest % dl == 0 and rest // dl < k    # its tap k_last-1 reads the last position
            cuts = sorted({0, k, k_last} | ({k_last - 1} if hit else set()))
            spans = list(zip(cuts, cuts[1:]))
            interior = [(a, b, 0) for a, b in spans]
            last = [(a, b, int(hit and a == k_last - 1)) for a, b in spans if b <= k_last]
            if n_out[ax] == 1:                              # the only position is the last one
                split_out.append(False)
                groups.append({0: last})
            elif k_last < k or hit:
                split_out.append(True)
                groups.append({0: interior, 1: last})
            else:
                split_out.append(False)
                groups.append({0: [(0, k, 0)]})
        plain = not any(split_out) and all(groups[ax][0] == [(0, layer.kernel[ax], 0)] for ax in range(2))
        return plain, tuple(split_out), groups

    def _emit_windows(self, node, x, split_out, groups, dil, stride, term, combine):
        """Each output class as a combination of sub-window terms on its inputs' class maps; a term
        shared by several classes is computed once. Returns the taps computed per position."""
        cache, variants, taps = {}, {}, 0
        for key in self._keys(split_out):
            gy, gx = groups[0][key[0]], groups[1][key[1]]
            terms = []
            for y0, y1, cy in gy:
                for x0, x1, cx in gx:
                    ck = (y0, y1, cy, x0, x1, cx)
                    if ck not in cache:
                        src = self._var(x, (cy, cx))
                        shift = (y0 * dil[0], x0 * dil[1])    # taps from y0, x0 on: the window on a shifted map
                        if shift[0] % stride[0] or shift[1] % stride[1]:
                            src = self.graph.call_function(
                                operator.getitem, (src, (Ellipsis, slice(shift[0], None), slice(shift[1], None))))
                            cache[ck] = term(src, (y0, y1), (x0, x1))
                        else:
                            # or the window's output, shifted: the layer reads its whole (contiguous,
                            # channels_last) input and only a view is sliced
                            cache[ck] = term(src, (y0, y1), (x0, x1))
                            if any(shift):
                                cache[ck] = self.graph.call_function(operator.getitem, (cache[ck], (
                                    Ellipsis, slice(shift[0] // stride[0], None), slice(shift[1] // stride[1], None))))
                        taps += (y1 - y0) * (x1 - x0)
                    terms.append(cache[ck])
            variants[key] = combine(terms, gy[-1][1] * gx[-1][1])
        self._set_variants(node, split_out, variants)
        return taps

    def _combine(self, terms, fn):
        if len(terms) == 1:
            return terms[0]
        out = None
        for t in terms:
            t = self.graph.call_function(ops.trim_to_smallest, (t, *[o for o in terms if o is not t]))
            out = t if out is None else self.graph.call_function(fn, (out, t))
        return out

    def _check_layout(self, node, layer):
        moved = [a for a in node.all_input_nodes if a in self.layout]
        if not moved or layer.kind in ("transpose", "reshape", "linear") or \
                (layer.kind == "pointwise" and _layout_free(node, layer)):
            return
        raise UnsupportedLayerError(
            f"layer '{layer.name}' reads the output of '{self.layout[moved[0]][1]}', which moves the spatial dims "
            f"(dims now in order {self.layout[moved[0]][0]}): that moves spatial data, which no dense map can "
            "hold; only a flatten followed by a Linear layer converts after such a permute (the Linear then "
            "reads its weight in the permuted order)")

    def _output(self, node):
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
                    "(fcnseg.strip_padding and fcnseg.geometry compute it)")
            if geo.g != self.s:
                raise OutputStrideError(f"output_stride {self.s} exceeds the network's total stride {geo.d}")
            assert a not in self.split, "a 1x1 output has no edge map"
        first = self.geo[leaves[0]]
        rf = tuple(max(self.geo[a].rf[ax] for a in leaves) for ax in range(2))
        self.out_geo = Geo(first.kind, first.hw, first.d, first.g, rf, first.offset)
        self.num_classes = int(self.values[leaves[0]].shape[1])     # of the first head
        self.per_patch_tail, self.tail_inputs = None, []
        if any(a in self.per_patch for a in leaves):
            self._build_per_patch_tail(out, leaves)
        else:
            self.graph.output(torch.fx.node.map_arg(out, lambda a: self.env[a]))

    # ---- spatial layers ------------------------------------------------------------------------
    def _spatial_in(self, node, layer):
        x = node.args[0]
        geo = self.geo[x]
        if geo.kind != "map" or self.values[x].dim() != 4:
            raise UnsupportedLayerError(f"layer '{layer.name}' ({layer.kind}) expects an (N, C, H, W) map")
        if any(layer.padding):
            raise PaddingError(f"layer '{layer.name}' zero-pads its input by {layer.padding}: a dense pass cannot "
                               f"reproduce the zeros at every patch's border; {STRIP_HINT}")
        return x, geo

    def _window(self, node, layer, x, geo):
        """The dense stride, dilation and geo of a windowed layer."""
        h_in = self.values[x].shape[-2:]
        out_val = self.values[node]
        h_out = out_val.shape[-2:] if out_val.dim() == 4 else (1, 1)   # global pooling without keepdim
        # a last window past the edge of the map (ceil_mode) is handled by _plan
        t1, g = self._step(geo, layer.stride, layer.name)
        dil = _mul(layer.dilation, geo.r)
        d = _mul(geo.d, layer.stride)
        rf = tuple(geo.rf[a] + (layer.kernel[a] - 1) * layer.dilation[a] * geo.d[a] for a in range(2))
        return t1, dil, Geo("map", tuple(h_out), d, g, rf, geo.offset)

    def _conv(self, node, layer):
        x, geo = self._spatial_in(node, layer)
        w_val = self._val(node.args[1]) if layer.module is None else layer.module.weight
        layer.kernel = tuple(w_val.shape[-2:])
        t1, dil, out = self._window(node, layer, x, geo)
        if layer.module is not None:
            w = self._attr(layer.weight)
            b = self._attr(layer.bias) if layer.bias is not None else None
        else:
            w, b = self._map(node.args[1]), self._map(layer.bias)
        taps = self._conv_windows(node, layer, x, self.values[x].shape[-2:], out.hw, w, b, t1, dil, layer.groups)
        self.geo[node] = out
        c_out, c_in_g = w_val.shape[0], w_val.shape[1]
        k = layer.kernel[0] * layer.kernel[1]
        self._record(layer, geo, out, t1, dil, 2 * c_in_g * k * c_out, out.hw, taps / k)

    def _conv_windows(self, node, layer, x, n_in, n_out, w, b, t1, dil, groups):
        """conv2d(x, w) in the dense network; with edge maps, a sum of convolutions with slices of w
        (views: gradients reach w). Returns the taps computed per position."""
        plain, split_out, plan = self._plan(layer, x, n_in, n_out)
        if plain:
            self.env[node] = self.graph.call_function(F.conv2d, (self.env[x], w, b, t1, 0, dil, groups))
            return layer.kernel[0] * layer.kernel[1]

        def term(src, ry, rx):
            full = ry == (0, layer.kernel[0]) and rx == (0, layer.kernel[1])
            w_sub = w if full else self.graph.call_function(
                operator.getitem, (w, (slice(None), slice(None), slice(*ry), slice(*rx))))
            # the bias once per output class: every class has exactly one term starting at tap (0, 0)
            bias = b if ry[0] == 0 and rx[0] == 0 else None
            return self.graph.call_function(F.conv2d, (src, w_sub, bias, t1, 0, dil, groups))

        return self._emit_windows(node, x, split_out, plan, dil, t1, term,
                                  lambda terms, _: self._combine(terms, operator.add))

    def _pool(self, node, layer):
        x, geo = self._spatial_in(node, layer)
        t1, dil, out = self._window(node, layer, x, geo)
        c = int(self.values[x].shape[1])
        plain, split_out, plan = self._plan(layer, x, self.values[x].shape[-2:], out.hw)
        k = layer.kernel[0] * layer.kernel[1]
        if plain:
            self.env[node] = self._pool_window(layer, self.env[x], layer.kernel, t1, dil, layer.divisor, c)
            taps = k
        elif layer.pool == "max":
            taps = self._emit_windows(
                node, x, split_out, plan, dil, t1,
                lambda src, ry, rx: self._pool_window(layer, src, (ry[1] - ry[0], rx[1] - rx[0]), t1, dil, None, c),
                lambda terms, _: self._combine(terms, torch.maximum))
        else:
            # window sums, added, then divided once by the class's divisor: for a partial window
            # PyTorch divides by the taps inside the map (padding 0), or by divisor_override
            def mean(terms, size):
                return self.graph.call_function(operator.truediv, (self._combine(terms, operator.add),
                                                                   float(layer.divisor or size)))
            taps = self._emit_windows(
                node, x, split_out, plan, dil, t1,
                lambda src, ry, rx: self._pool_window(layer, src, (ry[1] - ry[0], rx[1] - rx[0]), t1, dil, 1, c),
                mean)
        self.geo[node] = out
        self._record(layer, geo, out, t1, dil, c * k, out.hw, taps / k)

    def _pool_window(self, layer, xn, kernel, t1, dil, divisor, channels):
        if kernel == (1, 1) and t1 == (1, 1) and divisor in (None, 1):
            return xn        # a 1x1 window at stride 1 (adaptive pooling at its own size) is the identity
        if layer.pool == "max":
            return self.graph.call_function(F.max_pool2d, (xn, kernel, t1, 0, dil))
        if dil == (1, 1) and divisor != 1:
            return self.graph.call_function(F.avg_pool2d, (xn, kernel, t1, 0, False, True, divisor))
        # window sums (divisor 1) as a depthwise convolution: exports everywhere, unlike divisor_override
        return self.graph.call_function(ops.avg_pool2d_dilated, (xn, kernel, t1, dil, divisor, channels))

    def _adaptive(self, node, layer):
        x = node.args[0]
        h_in = tuple(self.values[x].shape[-2:])
        o = layer.out_size if isinstance(layer.out_size, (tuple, list)) else (layer.out_size, layer.out_size)
        o = tuple(h_in[a] if o[a] is None else int(o[a]) for a in range(2))
        k, t = [], []
        for a in range(2):
            starts = [i * h_in[a] // o[a] for i in range(o[a])]
            ends = [-((-(i + 1) * h_in[a]) // o[a]) for i in range(o[a])]
            sizes = {e - s for s, e in zip(starts, ends)}
            steps = {b - a_ for a_, b in zip(starts, starts[1:])} or {1}
            if len(sizes) != 1 or len(steps) != 1 or min(steps) < 1:
                raise PatchSizeError(
                    f"layer '{layer.name}': adaptive pooling from {h_in} to {o} uses unequal windows for patch size "
                    f"{self.patch_size}; choose a patch size whose map at this layer is a multiple of {o}")
            k.append(sizes.pop())
            t.append(steps.pop())
        layer.kernel, layer.stride, layer.kind = tuple(k), tuple(t), "pool"
        self._pool(node, layer)

    def _global(self, node, layer):
        x = node.args[0]
        nd = self.values[x].dim()
        if layer.dim is None:
            raise UnsupportedLayerError(f"layer '{layer.name}' reduces over every dim, the batch included; "
                                        "reduce over (2, 3) for global pooling")
        dims = layer.dim if isinstance(layer.dim, (tuple, list)) else (layer.dim,)
        dims = {int(d) % nd for d in dims}
        if self.geo[x].kind == "flat":
            if self.geo[x].hw == (1, 1) and dims == {1} and layer.extra.get("keepdim"):
                return self._per_variant(node, layer, self._pointwise)   # a sum over features, kept as (N, 1)
            raise UnsupportedLayerError(f"layer '{layer.name}' reduces a flattened feature vector; only "
                                        "reductions with keepdim=True over the features of a 1x1 vector convert")
        if not dims & {nd - 2, nd - 1}:           # a reduction over channels is pointwise in space
            return self._per_variant(node, layer, self._pointwise)
        if dims != {nd - 2, nd - 1} or nd != 4:
            raise UnsupportedLayerError(f"layer '{layer.name}' reduces over dims {sorted(dims)}; only global "
                                        "pooling over both spatial dims of an (N, C, H, W) map converts")
        layer.kernel, layer.stride, layer.kind = tuple(self.values[x].shape[-2:]), (1, 1), "pool"
        self._pool(node, layer)
        if not layer.extra.get("keepdim"):
            self.geo[node] = Geo("flat", (1, 1), *[getattr(self.geo[node], f) for f in ("d", "g", "rf", "offset")])

    def _linear(self, node, layer):
        x = node.args[0]
        geo, w_val = self.geo[x], (layer.module.weight if layer.module is not None else self._val(node.args[1]))
        shape = tuple(self.values[x].shape)
        if geo.kind != "flat" or len(shape) != 2:
            raise UnsupportedLayerError(f"layer '{layer.name}' (Linear) applies to input of shape {shape}; fcnseg "
                                        "converts Linear layers on flattened (N, C*h*w) features")
        h, w = geo.hw
        c = shape[1] // (h * w)
        out_f = w_val.shape[0]
        wn = self._attr(layer.weight) if layer.module is not None else self.env[node.args[1]]
        b = (self._attr(layer.bias) if layer.bias is not None else None) if layer.module is not None \
            else self._map(layer.bias)
        # (out, C*h*w) -> (out, C, h, w): the FC layer is an h x w convolution over the last map
        order = self.layout[x][0] if x in self.layout else IDENTITY_4D
        sizes = (None, c, h, w)
        w4 = self.graph.call_method("view", (wn, out_f, *[sizes[d] for d in order[1:]]))
        if order != IDENTITY_4D:
            # the patch flattened its map in another dim order (an NHWC port): the same weight, read
            # through a permuted view (no copy; gradients reach the weight)
            w4 = self.graph.call_method("permute", (w4, 0, *[1 + order[1:].index(d) for d in (1, 2, 3)]))
        dil = geo.r
        layer.kernel, layer.stride, layer.dilation = (h, w), (1, 1), (1, 1)
        taps = self._conv_windows(node, layer, x, (h, w), (1, 1), w4, b, (1, 1), dil, 1)
        rf = tuple(geo.rf[a] + (geo.hw[a] - 1) * geo.d[a] for a in range(2))
        self.geo[node] = Geo("flat", (1, 1), geo.d, geo.g, rf, geo.offset)
        self._record(layer, geo, self.geo[node], (1, 1), dil, 2 * shape[1] * out_f, (1, 1), taps / (h * w))

    # ---- layout ----------------------------------------------------------------------------------
    def _reshape(self, node, layer):
        x = node.args[0]
        geo, s_in, s_out = self.geo[x], tuple(self.values[x].shape), tuple(self.values[node].shape)
        xn = self.env[x]
        if len(s_out) == 2 and s_out[1] == math.prod(s_in[1:]):          # flatten
            self.env[node] = xn if geo.kind == "flat" or len(s_in) == 4 else \
                self.graph.call_function(ops.reshape_keep_spatial, (xn, (math.prod(s_in[1:-2]),)))
            self.geo[node] = Geo("flat", geo.hw, geo.d, geo.g, geo.rf, geo.offset)
            if x in self.layout:
                self.layout[node] = self.layout[x]     # read by a Linear layer in the permuted order
        elif x in self.layout:
            raise UnsupportedLayerError(
                f"layer '{layer.name}' reshapes {s_in} to {s_out} after '{self.layout[x][1]}' permuted the spatial "
                "dims: that moves spatial data; only a flatten to (N, features) followed by a Linear layer converts")
        elif geo.kind == "flat" and len(s_out) == 4 and s_out[2:] == geo.hw:  # unflatten (N, C, h, w)
            self.env[node] = xn
            self.geo[node] = Geo("map", geo.hw, geo.d, geo.g, geo.rf, geo.offset)
        elif geo.kind == "map" and len(s_in) >= 4 and len(s_out) >= 4 and s_out[-2:] == s_in[-2:]:
            self.env[node] = self.graph.call_function(ops.reshape_keep_spatial, (xn, s_out[1:-2]))
            self.geo[node] = geo
        else:
            raise UnsupportedLayerError(f"layer '{layer.name}' reshapes {s_in} to {s_out}; only flattening "
                                        "(N, C, h, w) -> (N, C*h*w) and reshapes of the channel dims convert")

    def _transpose(self, node, layer):
        x = node.args[0]
        nd = self.values[x].dim()
        args = layer.extra["args"]
        dims = [int(a) % nd for a in (args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args)]
        order = list(range(nd))
        if node.target in ("transpose", torch.transpose):
            order[dims[0]], order[dims[1]] = order[dims[1]], order[dims[0]]
        else:
            order = dims
        moved = {i for i in range(nd) if order[i] != i}
        if 0 in moved:
            raise UnsupportedLayerError(f"layer '{layer.name}' moves the batch dim; only channel and spatial dims "
                                        "may be permuted")
        if not moved & {nd - 2, nd - 1} and x not in self.layout:
            return self._pointwise(node, layer)          # channel dims only
        if nd != 4 or self.geo[x].kind != "map":
            raise UnsupportedLayerError(f"layer '{layer.name}' moves the spatial dims of a {nd}-D tensor; only "
                                        "permutes of an (N, C, H, W) map that a flatten + Linear then read convert")
        # the dense map stays (N, C, H, W); the permuted order is remembered for the Linear layer
        # that reads it after a flatten (any other reader is refused in _check_layout)
        before = self.layout[x][0] if x in self.layout else IDENTITY_4D
        after = tuple(before[d] for d in order)
        self.env[node] = self.env[x]
        self.geo[node] = self.geo[x]
        self.layout.pop(node, None)
        if after != IDENTITY_4D:
            self.layout[node] = (after, layer.name)

    def _chunk(self, node, layer):
        nd = self.values[node.args[0]].dim()
        if self.geo[node.args[0]].kind != "map" or int(layer.dim) % nd in (0, nd - 2, nd - 1):
            raise UnsupportedLayerError(f"layer '{layer.name}' splits along dim {layer.dim}; only channel splits convert")
        self.env[node] = self.graph.node_copy(node, lambda n: self.env[n])
        self.geo[node] = Geo("tuple", *[getattr(self.geo[node.args[0]], f) for f in ("hw", "d", "g", "rf", "offset")])

    def _getitem(self, node, layer):
        src = self.geo[node.args[0]]
        idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        if src.kind in ("map", "flat") and len(idx) == 2 and idx[0] == slice(None) and isinstance(idx[1], slice) \
                and (src.kind == "map" or src.hw == (1, 1)):
            return self._pointwise(node, layer)          # a channel slice x[:, a:b]
        if src.kind != "tuple":
            raise UnsupportedLayerError(f"layer '{node.name}' indexes a feature map; crop with "
                                        "fcnseg.ops.crop_to_smallest or remove the indexing")
        self.env[node] = self.graph.node_copy(node, lambda n: self.env[n])
        self.geo[node] = Geo("map", src.hw, src.d, src.g, src.rf, src.offset)

    def _crop(self, node, layer):
        self._per_variant(node, layer, self._crop_map)
        h_in, h_out = self.values[node.args[0]].shape[-2:], self.values[node].shape[-2:]
        # the cropped map's last position is the input's last one only where nothing is cut at the
        # bottom/right; a 1x1 crop has no interior
        self._pick_class(node, [0 if h_in[a] - h_out[a] - (h_in[a] - h_out[a]) // 2 else 1 if h_out[a] == 1 else None
                                for a in range(2)])

    def _crop_map(self, node, layer):
        x = node.args[0]
        geo = self.geo[x]
        h_in, h_out = self.values[x].shape[-2:], self.values[node].shape[-2:]
        top, left = (h_in[0] - h_out[0]) // 2, (h_in[1] - h_out[1]) // 2
        r = geo.r
        # a crop of c cells at rate r is a shift of c*r dense rows: (*) holds for the cropped map
        idx = (Ellipsis, slice(top * r[0], None), slice(left * r[1], None))
        self.env[node] = self.graph.call_function(operator.getitem, (self.env[x], idx))
        off = (geo.offset[0] + top * geo.d[0], geo.offset[1] + left * geo.d[1])
        self.geo[node] = Geo("map", tuple(h_out), geo.d, geo.g, geo.rf, off)

    # ---- position-wise layers ------------------------------------------------------------------
    def _pointwise(self, node, layer):
        x = node.all_input_nodes[0]
        geo = self.geo[x]
        if geo.kind == "flat" and geo.hw != (1, 1) and isinstance(layer.module, PER_FEATURE_MODULES):
            raise UnsupportedLayerError(f"layer '{layer.name}' has a parameter per flattened feature of a "
                                        f"{geo.hw} map: that is a parameter per position, which a dense pass "
                                        "cannot share")
        if isinstance(layer.module, TRAIN_MODE_UNSAFE) and (layer.name, layer.module) not in self.unsafe:
            self.unsafe.append((layer.name, layer.module))
        if isinstance(layer.module, nn.BatchNorm1d):
            # BatchNorm1d refuses 4-D input; the same affine map per channel via the functional form
            m = layer.module
            args = [self.env[x]] + [self._attr(f"{node.target}.{p}") if getattr(m, p) is not None else None
                                    for p in ("running_mean", "running_var", "weight", "bias")]
            self.env[node] = self.graph.call_function(F.batch_norm, tuple(args), {"training": False, "eps": m.eps})
        else:
            self.env[node] = self.graph.node_copy(node, lambda n: self.env[n])
            if node.op == "call_module":
                self._module(node.target)
        self.geo[node] = Geo(geo.kind, geo.hw, geo.d, geo.g, geo.rf, geo.offset)
        if x in self.layout:
            self.layout[node] = self.layout[x]

    def _softmax(self, node, layer):
        x = node.args[0]
        nd = self.values[x].dim()
        if int(layer.dim) % nd != 1:
            raise UnsupportedLayerError(f"layer '{layer.name}' normalises over dim {layer.dim}; only the class "
                                        "dimension (1) converts")
        log = isinstance(layer.module, nn.LogSoftmax) or "log" in getattr(node.target, "__name__", str(node.target))
        self.env[node] = self.graph.call_function(F.log_softmax if log else F.softmax, (self.env[x],), {"dim": 1})
        self.geo[node] = self.geo[x]

    def _merge_inputs(self, node, tensors):
        geos = [self.geo[t] for t in tensors]
        first = geos[0]
        for t, g in zip(tensors, geos):
            if g.kind != first.kind or g.hw != first.hw or g.d != first.d:
                if (1, 1) in (g.hw, first.hw) and node in self.per_patch:
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

    def _trimmed(self, tensors):
        if len(tensors) < 2:
            return {t: self.env[t] for t in tensors}
        return {t: self.graph.call_function(ops.trim_to_smallest, (self.env[t], *[self.env[o] for o in tensors if o is not t]))
                for t in tensors}

    def _merge(self, node, layer):
        tensors = self._tensor_inputs(node)
        for a in node.all_input_nodes:
            v = self.values[a]
            if self.geo[a].kind == "const" and isinstance(v, torch.Tensor) and v.numel() > 1 and \
                    (v.dim() < 2 or tuple(v.shape[-2:]) != (1, 1) or self.geo[tensors[0]].kind == "flat"):
                raise UnsupportedLayerError(f"layer '{node.name}' combines the features with a constant of shape "
                                            f"{tuple(v.shape)}: a value per position cannot be shared by a dense pass")
        geo = self._merge_inputs(node, tensors)
        trimmed = self._trimmed(tensors)
        self.env[node] = self.graph.node_copy(node, lambda n: trimmed.get(n, self.env[n]))
        self.geo[node] = geo

    def _cat(self, node, layer):
        tensors = list(node.args[0])
        nd = self.values[tensors[0]].dim()
        if int(layer.dim) % nd != 1:
            raise UnsupportedLayerError(f"layer '{layer.name}' concatenates along dim {layer.dim}; only channel "
                                        "concatenation (dim 1) converts")
        geo = self._merge_inputs(node, tensors)
        trimmed = self._trimmed(tensors)
        self.env[node] = self.graph.call_function(torch.cat, ([trimmed[t] for t in tensors], 1))
        self.geo[node] = geo


def convert(gm, values, patch_size, output_stride) -> Conversion:
    return Converter(gm, values, patch_size, output_stride).run()
