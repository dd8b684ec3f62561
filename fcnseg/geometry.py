"""The geometry types of a conversion, in one place.

- `Geo`: where one traced node's values live, patch network vs dense network (the converter's
  per-node bookkeeping; docs/algorithm.md, "The output stride grid").
- `LayerGeometry`: one layer's row of the cost table.
- `Geometry`: what a whole conversion costs and sees: receptive field, strides, FLOPs
  (docs/algorithm.md, "Cost model"); `fcnseg.geometry_of(model)` returns it.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Geo:
    """Where a node's values live: patch-network size, cumulative stride, dense grid and rate."""
    kind: str                  # map (N, C.., h, w) | flat (N, C*h*w) | const | shape | tuple
    hw: tuple = (1, 1)         # spatial size in the patch network (for flat: of the flattened map)
    d: tuple = (1, 1)          # cumulative stride of the original network
    g: tuple = (1, 1)          # stride kept in the dense network
    rf: tuple = (1, 1)         # receptive field, input pixels
    offset: tuple = (0, 0)     # top-left input pixel of feature (0, 0)'s receptive field

    @property
    def r(self):
        """The dilation rate of the dense map: d / g."""
        return (self.d[0] // self.g[0], self.d[1] // self.g[1])


@dataclass
class LayerGeometry:
    name: str
    kind: str
    kernel: tuple
    stride: tuple
    out_size: tuple            # in the patch network
    cum_stride: tuple          # after the layer
    dense_stride: tuple
    dense_dilation: tuple
    receptive_field: tuple
    offset: tuple
    flops_patch: int
    flops_dense: int           # per output pixel


@dataclass
class Geometry:
    patch_size: tuple
    in_channels: int
    num_classes: int
    output_stride: tuple
    receptive_field: tuple       # input pixels that can influence one output
    total_stride: tuple          # cumulative stride of the original network at its output
    offset: tuple                # top-left of the receptive field inside the patch
    flops_patch: int             # one patch forward (2 * multiply-adds, + pooling window elements)
    flops_dense_per_pixel: int   # the dense pass, per output pixel
    layers: list = field(default_factory=list)

    @property
    def flop_ratio(self) -> float:
        """The speed-up a perfect implementation of both methods would show."""
        return self.flops_patch / max(self.flops_dense_per_pixel, 1)

    @property
    def halo(self) -> tuple:
        """Rows/cols of context needed above, below, left, right of a tile (the patch extents)."""
        p, q = self.patch_size
        return ((p - 1) // 2, p // 2, (q - 1) // 2, q // 2)

    def table(self) -> str:
        head = f"{'layer':28} {'kind':8} {'kernel':8} {'stride':7} {'out':9} {'cum':7} {'dense s/dil':12} " \
               f"{'RF':9} {'MFLOP patch':>12} {'kFLOP/px':>10}"
        rows = [head, "-" * len(head)]
        for layer in self.layers:
            rows.append(f"{layer.name[:28]:28} {layer.kind:8} {_p(layer.kernel):8} {_p(layer.stride):7} "
                        f"{_p(layer.out_size):9} {_p(layer.cum_stride):7} "
                        f"{_p(layer.dense_stride) + '/' + _p(layer.dense_dilation):12} "
                        f"{_p(layer.receptive_field):9} {layer.flops_patch / 1e6:12.3f} "
                        f"{layer.flops_dense / 1e3:10.2f}")
        rows.append(f"patch {_p(self.patch_size)}, receptive field {_p(self.receptive_field)}, total stride "
                    f"{_p(self.total_stride)}, output stride {_p(self.output_stride)}; FLOPs per patch "
                    f"{self.flops_patch / 1e6:.2f} M, dense per pixel {self.flops_dense_per_pixel / 1e3:.2f} k, "
                    f"ratio {self.flop_ratio:.0f}x")
        return "\n".join(rows)


def _p(t) -> str:
    return f"{t[0]}x{t[1]}" if t[0] != t[1] else str(t[0])


def build_geometry(conv, patch_size, in_channels, output_stride) -> Geometry:
    g = conv.out_geo
    # global pooling (heads, squeeze-excitation) sees the whole patch and no more
    rf = (min(g.rf[0], patch_size[0]), min(g.rf[1], patch_size[1]))
    return Geometry(tuple(patch_size), in_channels, conv.num_classes, tuple(output_stride), rf, g.d, g.offset,
                    sum(layer.flops_patch for layer in conv.layers),
                    sum(layer.flops_dense for layer in conv.layers), conv.layers)
