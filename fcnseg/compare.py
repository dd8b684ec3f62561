"""The dense network against the patch-by-patch reference, at every or at sampled pixels.

    result = fcnseg.compare_dense(fcnseg.densify(model), model, x)    # every output pixel
    result.max_rel <= 1e-9                                              # float64: exact
    fcnseg.compare_dense(dense, model, x, pixels=fcnseg.random_grid_pixels(h, w, s, 500))

The one comparator of the project: the tests, tools/verify.py and the inference check
(`check=true`) all call it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_flatten, tree_map

from .ops import as_pair
from .patch import patchwise, pixel_index


@dataclass(frozen=True)
class Comparison:
    max_abs: float            # max |dense - patchwise| over the pixels, classes and outputs
    max_rel: float            # max_abs / max |patchwise| (per output, the largest of them)
    pixels: int               # pixels compared per image
    label_agreement: float    # fraction of (image, pixel) whose argmax class agrees (first output)
    label_mismatches: int     # (image, pixel) pairs whose argmax class differs (first output)
    dense_seconds: float      # the dense pass (0 when its scores were given)
    patch_seconds: float      # patch-by-patch on the compared pixels

    def ok(self, tolerance: float) -> bool:
        return self.max_rel <= tolerance


def grid_pixels(h: int, w: int, output_stride=1) -> torch.Tensor:
    """Boolean (H, W) mask of the pixels (m*s, n*s) the dense network computes."""
    s = as_pair(output_stride)
    grid = torch.zeros(h, w, dtype=torch.bool)
    grid[:: s[0], :: s[1]] = True
    return grid


def random_grid_pixels(h: int, w: int, output_stride=1, count: int = 500, seed: int = 0) -> torch.Tensor:
    """Boolean (H, W) mask: `count` random grid pixels, plus every pixel of the grid's first and
    last rows and columns (where padding matters most)."""
    s = as_pair(output_stride)
    grid = grid_pixels(h, w, s)
    rows, cols = torch.arange(h)[:, None], torch.arange(w)[None, :]
    edge = (rows == 0) | (rows >= h - s[0]) | (cols == 0) | (cols >= w - s[1])
    g = torch.Generator().manual_seed(seed)
    on_grid = grid.reshape(-1).nonzero()[:, 0]
    pick = torch.zeros(h * w, dtype=torch.bool)
    pick[on_grid[torch.randperm(len(on_grid), generator=g)[:count]]] = True
    return grid & (edge | pick.reshape(h, w))


def compare_dense(dense, model, x: torch.Tensor, pixels=None, *, dense_scores=None, batch_size: int = 256,
                  patch_size=None, pad_mode: str | None = None, pad_value: float | None = None) -> Comparison:
    """`dense` (a fcnseg.densify result) vs `fcnseg.patchwise(model)` on images x (N, C, H, W).

    pixels: a boolean (H, W) mask or (M, 2) tensor of (i, j) on the output grid (multiples of
        the output stride); None: every grid pixel.
    dense_scores: the dense network's scores at those pixels, (N, K, M) in the order of
        `pixel_index(pixels)` (e.g. from tiled inference); None: run `dense(x)`.
    patch_size, pad_mode, pad_value: the reference's patch rule (None: the dense network's own;
        give them to check a dense network against the rule it should follow, e.g. a checkpoint's).
    A classifier with several outputs (tuple, list or dict) is compared output by output.
    """
    n, _, h, w = x.shape
    s = as_pair(dense.output_stride)
    idx = pixel_index(grid_pixels(h, w, s) if pixels is None else pixels, h, w)
    off_grid = (idx[:, 0] % s[0] != 0) | (idx[:, 1] % s[1] != 0)
    if off_grid.any():
        i, j = idx[off_grid][0].tolist()
        raise ValueError(f"pixel ({i}, {j}) is not on the output grid of output_stride {s}: the dense network "
                         "computes only pixels whose coordinates are multiples of the stride")
    t0 = time.perf_counter()
    with torch.no_grad():
        if dense_scores is None:
            out = dense(x)
            dense_scores = tree_map(lambda t: t[:, :, idx[:, 0] // s[0], idx[:, 1] // s[1]], out)
            t_dense = time.perf_counter() - t0
        else:
            t_dense = 0.0
        t0 = time.perf_counter()
        ref = patchwise(model, x, dense.patch_size if patch_size is None else patch_size,
                        pad_mode=dense.pad_mode if pad_mode is None else pad_mode,
                        pad_value=dense.pad_value if pad_value is None else pad_value,
                        pixels=idx, batch_size=batch_size)
        t_patch = time.perf_counter() - t0
    ref = tree_map(lambda t: t[:, :, idx[:, 0], idx[:, 1]], ref)               # (N, K, M) per output
    got, _ = tree_flatten(dense_scores)
    want, _ = tree_flatten(ref)
    if len(got) != len(want):
        raise ValueError(f"the dense network gives {len(got)} outputs, the classifier {len(want)}")
    got = [a.to(b.device, b.dtype) for a, b in zip(got, want)]
    max_abs = max_rel = 0.0
    for a, b in zip(got, want):
        if a.shape != b.shape:
            raise ValueError(f"dense scores {tuple(a.shape)} and patch-by-patch scores {tuple(b.shape)} differ "
                             "in shape")
        err = (a - b).abs().max().item() if a.numel() else 0.0
        scale = b.abs().max().item() if b.numel() else 0.0
        max_abs = max(max_abs, err)
        max_rel = max(max_rel, err / max(scale, 1e-30))
    differ = int((got[0].argmax(1) != want[0].argmax(1)).sum()) if len(idx) else 0
    agree = 1.0 - differ / max(got[0].shape[0] * len(idx), 1)
    return Comparison(max_abs, max_rel, len(idx), agree, differ, t_dense, t_patch)


__all__ = ["Comparison", "compare_dense", "grid_pixels", "random_grid_pixels"]
