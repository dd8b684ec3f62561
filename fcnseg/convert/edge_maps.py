"""Edge maps of partial windows (docs/algorithm.md, "Ceil-mode pooling with partial last windows").

With ceil_mode the last window of a pooling layer can run past the edge of the patch's map. In a
dense map every position is the last window of some patch and an interior window of others, so a
node keeps, per axis, a second map for its features at the patch's last position (its *edge map*).
Every node has one map per class (cy, cx): 0 interior, 1 last position, on each split axis; class
(0, 0) is the node's value in the converter's env. Windowed layers read their input's classes
themselves (`plan` and `emit_windows`); every other layer runs once per class (`per_class`).
"""
from __future__ import annotations

import operator

from .. import ops
from .errors import PartialWindowError, PatchSizeError


def map_classes(split):
    """The map classes of a node: per axis 0 (interior) and, where split, 1 (last position)."""
    return [(cy, cx) for cy in ((0, 1) if split[0] else (0,)) for cx in ((0, 1) if split[1] else (0,))]


class EdgeMaps:
    """The edge maps of the nodes a converter has visited."""

    def __init__(self, cv):
        self.cv = cv
        self.split, self.variants = {}, {}   # node -> split axes (rows, cols); node -> {class: dense map}
        self.partial_windows = False

    def is_split(self, n) -> bool:
        return n in self.split

    def var(self, n, key):
        """The dense map that holds node n's features of class key (an unsplit axis has one map)."""
        if n not in self.split:
            return self.cv.env[n]
        sy, sx = self.split[n]
        return self.variants[n][(key[0] if sy else 0, key[1] if sx else 0)]

    def set(self, node, split, variants):
        self.cv.env[node] = variants[(0, 0)]
        if any(split):
            self.partial_windows = True
            self.split[node], self.variants[node] = tuple(split), variants
        else:
            self.split.pop(node, None)
            self.variants.pop(node, None)

    def per_class(self, node, layer, rule):
        """A layer that treats every position alike runs once per map class of its inputs."""
        cv = self.cv
        inputs = [a for a in node.all_input_nodes if a in self.split]
        if inputs and node in cv.per_patch:
            raise PartialWindowError(
                f"layer '{layer.name}' runs per patch after a patch-global gate (squeeze-excitation) and reads a "
                f"map with partial ceil-mode windows ('{inputs[0].name}'): this combination has no exact dense form; "
                "choose a patch size for which every pooling window fits")
        rule(cv, node, layer)
        if not inputs:
            return
        split = tuple(any(self.split[a][ax] for a in inputs) for ax in range(2))
        saved, variants = {a: cv.env[a] for a in inputs}, {(0, 0): cv.env[node]}
        for key in map_classes(split)[1:]:
            for a in inputs:
                cv.env[a] = self.var(a, key)
            rule(cv, node, layer)
            variants[key] = cv.env[node]
        cv.env.update(saved)
        self.set(node, split, variants)

    def pick_class(self, node, pick):
        """Axes with pick[ax] in (0, 1) become unsplit, keeping the map of that class."""
        if node not in self.split:
            return
        split = self.split[node]
        new = tuple(split[ax] and pick[ax] is None for ax in range(2))
        variants = {key: self.variants[node][tuple(pick[ax] if split[ax] and pick[ax] is not None else key[ax]
                                                   for ax in range(2))] for key in map_classes(new)}
        self.set(node, new, variants)

    def plan(self, layer, x, n_in, n_out):
        """Per axis: whether the output keeps an edge map, and per output class the tap groups
        [(first tap, end tap, input class)] its windows combine. Returns (plain, split, groups):
        plain when the layer is one ordinary window over one map.

        Only a layer's last window can be partial (ceil_mode), and only it can read the input's last
        position; every other window reads interior positions through all k taps."""
        split_in = self.split.get(x, (False, False))
        split_out, groups = [], []
        for ax in range(2):
            k, t, dl = layer.kernel[ax], layer.stride[ax], layer.dilation[ax]
            rest = n_in[ax] - 1 - (n_out[ax] - 1) * t       # first tap of the last window -> end of the map
            if rest < 0:
                raise PatchSizeError(f"layer '{layer.name}': with patch size {self.cv.patch_size} its last window "
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

    def emit_windows(self, node, x, split_out, groups, dil, stride, term, combine):
        """Each output class as a combination of sub-window terms on its inputs' class maps; a term
        shared by several classes is computed once. Returns the taps computed per position.

        term(src, (y0, y1), (x0, x1)): the window restricted to taps y0..y1-1, x0..x1-1, on src;
        combine(terms, taps): the class's output from its terms."""
        graph = self.cv.graph
        cache, variants, taps = {}, {}, 0
        for key in map_classes(split_out):
            gy, gx = groups[0][key[0]], groups[1][key[1]]
            terms = []
            for y0, y1, cy in gy:
                for x0, x1, cx in gx:
                    ck = (y0, y1, cy, x0, x1, cx)
                    if ck not in cache:
                        src = self.var(x, (cy, cx))
                        shift = (y0 * dil[0], x0 * dil[1])    # taps from y0, x0 on: the window on a shifted map
                        if shift[0] % stride[0] or shift[1] % stride[1]:
                            src = graph.call_function(
                                operator.getitem, (src, (Ellipsis, slice(shift[0], None), slice(shift[1], None))))
                            cache[ck] = term(src, (y0, y1), (x0, x1))
                        else:
                            # or the window's output, shifted: the layer reads its whole (contiguous,
                            # channels_last) input and only a view is sliced
                            cache[ck] = term(src, (y0, y1), (x0, x1))
                            if any(shift):
                                cache[ck] = graph.call_function(operator.getitem, (cache[ck], (
                                    Ellipsis, slice(shift[0] // stride[0], None), slice(shift[1] // stride[1], None))))
                        taps += (y1 - y0) * (x1 - x0)
                    terms.append(cache[ck])
            variants[key] = combine(terms, gy[-1][1] * gx[-1][1])
        self.set(node, split_out, variants)
        return taps

    def combine(self, terms, fn):
        """fn (add, maximum) over the terms, each trimmed to the smallest."""
        if len(terms) == 1:
            return terms[0]
        out = None
        for t in terms:
            t = self.cv.graph.call_function(ops.trim_to_smallest, (t, *[o for o in terms if o is not t]))
            out = t if out is None else self.cv.graph.call_function(fn, (out, t))
        return out
