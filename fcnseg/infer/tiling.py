"""Exact tiled dense inference: any image size, bounded memory, same numbers.

The dense network maps a padded input of Hp x Wp to floor((Hp - P)/s) + 1 rows of
outputs (P the patch height, s the output stride); output cell m is the classifier
on padded rows [m*s, m*s + P). So a block of output cells [m0, m0 + T) needs padded
rows [m0*s, (m0 + T - 1)*s + P): the tile's T*s rows plus a halo of P - s rows
(P - 1 at stride 1), taken from the network's own patch size and stride. Every window is built directly from the
unpadded image by index mapping with the network's own padding rule (np.pad
semantics), so the whole padded image is never materialised and each window holds
exactly the values the untiled pass would see. Stitching is then a plain copy: the
result is the untiled result, to the last bit up to the summation order of the
convolution kernels.

Images are usually kept in their raw dtype (uint8/uint16, H x W x C) and converted
to float per window by a ``transform``; conversion and normalisation are per-pixel,
so converting a window equals cropping the converted image. An image too large to hold
is an ImageSource (fcnseg.data.regions): each window reads only the block of rows and
columns it folds onto.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from fcnseg import runtime
from fcnseg.ops import PAD_MODES, as_pair, reflect_index

Transform = Callable[[np.ndarray], torch.Tensor]  # (h, w, C) raw -> (C, h, w) float


def dense_padding(dense: nn.Module, pad_mode: str | None = None, pad_value: float | None = None):
    """The padding rule of a dense network: its own attributes unless given explicitly."""
    mode = pad_mode if pad_mode is not None else getattr(dense, "pad_mode", None)
    value = pad_value if pad_value is not None else getattr(dense, "pad_value", 0.0)
    if mode is None:
        raise ValueError(
            f"{type(dense).__name__} does not say how it pads its input; pass pad_mode= "
            f"(one of {PAD_MODES}) and pad_value= as used when it was densified")
    if mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {mode!r}")
    return mode, float(value)


def fold_index(idx: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Map coordinates of the padded line back into [0, n) exactly as np.pad does.

    reflect: mirror without repeating the edge (np.pad "reflect", torch "reflect"),
    repeated for pads longer than the line; replicate: clamp (np.pad "edge");
    constant: clamp too, the caller overwrites the outside with the pad value.
    """
    idx = np.asarray(idx, dtype=np.int64)
    if mode == "reflect":
        return reflect_index(torch.from_numpy(idx), n).numpy()
    if mode in ("replicate", "constant"):
        return np.clip(idx, 0, n - 1)
    raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {mode!r}")


def image_hw(image) -> tuple[int, int]:
    """(H, W) of a (C, H, W) / (1, C, H, W) tensor or an (H, W[, C]) array."""
    if isinstance(image, torch.Tensor):
        if image.dim() == 4:
            if image.shape[0] != 1:
                raise ValueError(f"one image at a time, got a batch of shape {tuple(image.shape)}")
            return int(image.shape[2]), int(image.shape[3])
        if image.dim() == 3:
            return int(image.shape[1]), int(image.shape[2])
        raise ValueError(f"expected an image (C, H, W) or (1, C, H, W), got {tuple(image.shape)}")
    if _is_source(image):
        return int(image.height), int(image.width)
    shape = np.shape(image)
    if len(shape) not in (2, 3):
        raise ValueError(f"expected an array (H, W) or (H, W, C), got shape {shape}")
    return int(shape[0]), int(shape[1])


def _is_source(image) -> bool:
    """An ImageSource (fcnseg.data.regions): read by region, never whole."""
    return hasattr(image, "read") and hasattr(image, "height") and hasattr(image, "width")


def _read_folded(image, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Raw pixels at image rows r x cols c (inside the image)."""
    if not _is_source(image):
        return np.asarray(image)[r][:, c]
    r0, c0 = int(r.min()), int(c.min())
    block = image.read(r0, c0, int(r.max()) - r0 + 1, int(c.max()) - c0 + 1)
    return block[r - r0][:, c - c0]


def build_window(image, rows: np.ndarray, cols: np.ndarray, pad_mode: str, pad_value: float,
                 transform: Transform | None = None) -> torch.Tensor:
    """The padded window at image coordinates rows x cols (either may run outside).

    image: a float tensor (C, H, W) / (1, C, H, W) used as is, or a raw array (H, W[, C]) or an
    ImageSource turned into a float tensor by ``transform``. Returns (C, len(rows), len(cols)).
    """
    H, W = image_hw(image)
    r = fold_index(rows, H, pad_mode)
    c = fold_index(cols, W, pad_mode)
    if isinstance(image, torch.Tensor):
        img = image[0] if image.dim() == 4 else image
        ri = torch.from_numpy(r).to(img.device)
        ci = torch.from_numpy(c).to(img.device)
        win = img.index_select(1, ri).index_select(2, ci)  # (C, h, w)
    else:
        if transform is None:
            raise ValueError("a raw (H, W, C) array needs a transform= that makes it a float tensor")
        win = transform(np.ascontiguousarray(_read_folded(image, r, c)))
        if win.dim() != 3 or tuple(win.shape[1:]) != (len(rows), len(cols)):
            raise ValueError(f"transform returned shape {tuple(win.shape)}, expected "
                             f"(C, {len(rows)}, {len(cols)})")
    if pad_mode == "constant":
        row_out = torch.from_numpy((rows < 0) | (rows >= H)).to(win.device)
        col_out = torch.from_numpy((cols < 0) | (cols >= W)).to(win.device)
        if bool(row_out.any()) or bool(col_out.any()):
            win = win.clone()
            win[:, row_out, :] = pad_value
            win[:, :, col_out] = pad_value
    return win


@dataclass(frozen=True)
class TilePlan:
    """Which output cells each tile computes and which image rows/cols it reads.

    Output cell (m, n) is the pixel (m*s, n*s). The grid covers output cells
    [row0, row0 + rows) x [col0, col0 + cols). Tiles start every tile_rows (tile_cols)
    cells, so no two overlap; the last tile of a row or column is short, ending at the
    grid's border (tile_shape). tile_rows x tile_cols is the largest tile, the one that
    sets the memory a tile needs.
    """
    patch_size: tuple[int, int]
    stride: int
    row0: int
    col0: int
    rows: int
    cols: int
    tile_rows: int
    tile_cols: int

    @property
    def origins(self) -> list[tuple[int, int]]:
        return [(m, n) for m in range(self.row0, self.row0 + self.rows, self.tile_rows)
                for n in range(self.col0, self.col0 + self.cols, self.tile_cols)]

    def tile_shape(self, m0: int, n0: int) -> tuple[int, int]:
        """Output cells (rows, cols) of the tile at cell (m0, n0): the full tile, or less at the
        grid's last row or column of tiles."""
        return (min(self.tile_rows, self.row0 + self.rows - m0),
                min(self.tile_cols, self.col0 + self.cols - n0))

    @property
    def window_shape(self) -> tuple[int, int]:
        """Padded input size of the largest tile: (T - 1)*s + P per axis."""
        return self.tile_window_shape(self.row0, self.col0)

    def tile_window_shape(self, m0: int, n0: int) -> tuple[int, int]:
        """Padded input size of the tile at cell (m0, n0)."""
        (P, Q), (tr, tc) = self.patch_size, self.tile_shape(m0, n0)
        return (tr - 1) * self.stride + P, (tc - 1) * self.stride + Q

    def window_indices(self, m0: int, n0: int) -> tuple[np.ndarray, np.ndarray]:
        """Image rows and columns (may be outside the image) of the tile at cell (m0, n0)."""
        P, Q = self.patch_size
        h, w = self.tile_window_shape(m0, n0)
        # padded row r is image row r - (P-1)//2; the tile starts at padded row m0*s
        rows = m0 * self.stride - (P - 1) // 2 + np.arange(h)
        cols = n0 * self.stride - (Q - 1) // 2 + np.arange(w)
        return rows, cols


def plan_tiles(height: int, width: int, patch_size, stride: int, tile_size: int | None,
               region: Sequence[int] | None = None) -> TilePlan:
    """Cut the output grid of an image (or of a region (top, left, h, w) of it) into tiles.

    tile_size is the largest tile side in image pixels, rounded down to a multiple of the output
    stride; tiles of that size cover the grid and the last of each row and column is short.
    None or <= 0 means one tile for everything.

    Why full tiles and a short last one: the network's convolutions are valid, so on a tile of
    T output cells every layer's map is a*T + b wide per axis (a its scale, b its share of the
    halo; the window itself is T*s + P - s). An axis cut into n tiles then sums to
    a*cells + n*b per layer however the cells are split, and a map's area is the product of
    its two axes: with the same number of tiles per axis, full tiles plus a short last one
    compute exactly as much as tiles evened out over the image, and no two tiles overlap (a
    full last tile shifted back inside the grid would compute the overlap twice). Only the
    largest tile differs, and it sets the peak memory: always tile_size here, so the peak
    depends on the budget, not on the image.
    """
    P, Q = as_pair(patch_size)
    s = int(stride)
    if region is None:
        top, left, h, w = 0, 0, height, width
    else:
        top, left, h, w = (int(v) for v in region)
        if top < 0 or left < 0 or h <= 0 or w <= 0 or top + h > height or left + w > width:
            raise ValueError(f"region (top, left, height, width) = {tuple(region)} is not inside "
                             f"the {height}x{width} image")
    # output cells on the stride grid inside [top, top + h): m*s >= top and m*s < top + h
    row0, col0 = -(-top // s), -(-left // s)
    rows, cols = -(-(top + h) // s) - row0, -(-(left + w) // s) - col0
    if rows <= 0 or cols <= 0:
        raise ValueError(f"region {tuple(region)} contains no pixel of the output grid "
                         f"(every {s}th row and column); make it larger")
    if tile_size is None or tile_size <= 0:
        tr, tc = rows, cols
    else:
        t = int(tile_size) // s
        if t < 1:
            raise ValueError(f"tile_size={tile_size} is smaller than the output stride {s}; "
                             f"use at least {s}")
        tr, tc = min(t, rows), min(t, cols)
    return TilePlan((P, Q), s, row0, col0, rows, cols, tr, tc)


@dataclass
class GridPrediction:
    """labels (rows, cols) and scores (K, rows, cols) on the output grid; cell (m, n) is
    pixel ((row0 + m)*s, (col0 + n)*s). scores is None when not requested, a tensor, or
    the caller's ``scores_out`` array."""
    labels: torch.Tensor
    scores: torch.Tensor | np.ndarray | None
    stride: int
    row0: int = 0
    col0: int = 0


def label_dtype(num_classes: int) -> torch.dtype:
    """Smallest integer type for class indices (a 10000^2 map in int64 would be 800 MB)."""
    if num_classes <= 256:
        return torch.uint8
    if num_classes <= 32768:
        return torch.int16
    return torch.int32


def _param_dtype_device(dense: nn.Module):
    for p in dense.parameters():
        return p.dtype, p.device
    return torch.float32, torch.device("cpu")


def forward_windows(dense: nn.Module, batch: torch.Tensor, *, precision: str = "fp32",
                    channels_last: bool = False) -> torch.Tensor:
    """dense.forward_valid on a batch of padded windows (B, C, h, w) -> (B, K, h', w');
    precision: the setting of fcnseg.runtime.precision (auto, fp32, tf32, bf16, fp16; the old
    booleans: True means auto, False IEEE fp32)."""
    dtype, device = _param_dtype_device(dense)
    # asynchronous only from pinned memory (a pageable copy is synchronous anyway)
    batch = batch.to(device=device, dtype=dtype, non_blocking=batch.is_pinned())
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), runtime.precision_context(precision, device):
        return dense.forward_valid(batch)


def _check_window_output(out: torch.Tensor, plan: TilePlan, m0: int, n0: int, dense: nn.Module):
    want = plan.tile_shape(m0, n0)
    if tuple(out.shape[2:]) != want:
        h, w = plan.tile_window_shape(m0, n0)
        raise RuntimeError(
            f"{type(dense).__name__}.forward_valid gave {tuple(out.shape[2:])} outputs for a "
            f"{h}x{w} window, expected {want} from patch size {plan.patch_size} and output stride "
            f"{plan.stride}: the network's patch_size/output_stride do not describe it")


def iter_tile_outputs(dense: nn.Module, image, plan: TilePlan, *, pad_mode: str, pad_value: float,
                      transform: Transform | None = None, batch_size: int = 1, precision: str = "fp32",
                      channels_last: bool = False, origins: Sequence[tuple[int, int]] | None = None
                      ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (m0, n0, scores (K, *plan.tile_shape(m0, n0))) tile by tile; up to batch_size
    consecutive tiles of one shape share a pass; origins: the tiles to compute (default: all of
    the plan's)."""
    origins = plan.origins if origins is None else list(origins)
    limit = max(1, int(batch_size))
    b = 0
    while b < len(origins):
        shape = plan.tile_shape(*origins[b])
        e = b + 1
        while e < len(origins) and e - b < limit and plan.tile_shape(*origins[e]) == shape:
            e += 1
        chunk = origins[b:e]
        wins = [build_window(image, *plan.window_indices(m0, n0), pad_mode, pad_value, transform)
                for m0, n0 in chunk]
        out = forward_windows(dense, torch.stack(wins), precision=precision, channels_last=channels_last)
        _check_window_output(out, plan, *chunk[0], dense)
        for (m0, n0), o in zip(chunk, out):
            yield m0, n0, o
        b = e


def predict_tiled(dense: nn.Module, image, tile_size: int | None, *,
                  transform: Transform | None = None, region: Sequence[int] | None = None,
                  pad_mode: str | None = None, pad_value: float | None = None,
                  batch_size: int = 1, precision: str = "fp32", channels_last: bool = False,
                  return_scores: bool = True, scores_out: np.ndarray | None = None,
                  label_channels: int | None = None) -> GridPrediction:
    """Dense prediction of one image, tile by tile, identical to the untiled pass.

    dense: a DenseNet (``patch_size``, ``output_stride``, ``forward_valid``; padding rule
    from its ``pad_mode``/``pad_value`` unless given). image: a normalised tensor
    (C, H, W) or a raw array (H, W, C) with ``transform``. tile_size: the largest tile side in
    image pixels, rounded down to a multiple of the output stride (None/<=0: one tile).
    region: (top, left, height, width) to predict only part of the image. scores_out: an
    array (K, rows, cols) (e.g. a float16 memmap) to write scores into instead of holding them
    in memory. label_channels: label with the
    argmax of the first label_channels scores only (several heads' scores concatenated).
    """
    mode, value = dense_padding(dense, pad_mode, pad_value)
    H, W = image_hw(image)
    s = as_pair(getattr(dense, "output_stride", 1))
    if s[0] != s[1]:
        raise ValueError(f"anisotropic output stride {s} is not supported by tiling")
    plan = plan_tiles(H, W, dense.patch_size, s[0], tile_size, region)
    # every tile's maps reuse the pages of the tile before (fcnseg.runtime.reuse_freed_memory)
    with runtime.reuse_host_memory(_param_dtype_device(dense)[1]):
        labels = scores = None
        for m0, n0, out in iter_tile_outputs(dense, image, plan, pad_mode=mode, pad_value=value,
                                             transform=transform, batch_size=batch_size, precision=precision,
                                             channels_last=channels_last):
            K = out.shape[0]
            if labels is None:
                labels = torch.empty(plan.rows, plan.cols, dtype=label_dtype(K))
                if scores_out is not None:
                    if tuple(scores_out.shape) != (K, plan.rows, plan.cols):
                        raise ValueError(f"scores_out has shape {tuple(scores_out.shape)}, expected "
                                         f"{(K, plan.rows, plan.cols)}")
                    scores = scores_out
                elif return_scores:
                    scores = torch.empty(K, plan.rows, plan.cols, dtype=out.dtype)
            # argmax on the device, in the network's precision, before any down-cast
            r, c = m0 - plan.row0, n0 - plan.col0
            sl = (slice(r, r + out.shape[1]), slice(c, c + out.shape[2]))
            labels[sl] = out[:label_channels].argmax(0).to("cpu", label_dtype(K))
            if scores is not None:
                o = out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
                if isinstance(scores, torch.Tensor):
                    scores[(slice(None),) + sl] = o.to("cpu")
                else:
                    scores[(slice(None),) + sl] = o.cpu().numpy()
    return GridPrediction(labels, scores, s[0], plan.row0, plan.col0)


# --- automatic tile size -----------------------------------------------------------------

def _probe_activation_bytes(dense: nn.Module, in_channels: int, cells: int,
                            precision: str, channels_last: bool) -> tuple[int, list[int]]:
    """Run one window of ``cells`` x ``cells`` outputs; return its input bytes and the
    output bytes of every operator (in call order)."""
    dtype, device = _param_dtype_device(dense)
    P, Q = as_pair(dense.patch_size)
    s = as_pair(getattr(dense, "output_stride", 1))[0]
    x = torch.zeros(1, in_channels, (cells - 1) * s + P, (cells - 1) * s + Q, dtype=dtype)
    sizes: list[int] = []
    # every operator's output, functional calls included (a converted network is a graph of
    # F.conv2d/max_pool2d calls, not only of modules, so module hooks would miss most)
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Sizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor):
                    sizes.append(t.numel() * t.element_size())
            return out

    with _Sizes():
        out = forward_windows(dense, x, precision=precision, channels_last=channels_last)
    sizes.append(out.numel() * out.element_size())
    return x.numel() * x.element_size(), sizes


def auto_tile_size(dense: nn.Module, in_channels: int, memory_mb: float, *, batch_size: int = 1,
                   precision: str = "fp32", channels_last: bool = False, max_size: int = 1 << 15) -> int:
    """Largest tile side (image pixels, a multiple of the output stride) whose forward pass
    fits in ``memory_mb`` for a batch of ``batch_size`` windows.

    Two small probe windows (2 and 4 output cells a side) are run recording the output
    size of every operator. Each layer's map side is an affine function of the tile side (valid
    convolutions shrink it by a constant, strides divide it), so the probe sizes give
    each layer's size at any tile side. The estimate is 4x the largest operator output
    (its input, itself, a skip branch and allocator slack; measured on CPU: a 256 MB
    budget gave 240-310 MB of resident growth) plus the window and the scores.
    """
    s = as_pair(getattr(dense, "output_stride", 1))[0]
    t1, t2 = 2, 4
    in1, a1 = _probe_activation_bytes(dense, in_channels, t1, precision, channels_last)
    in2, a2 = _probe_activation_bytes(dense, in_channels, t2, precision, channels_last)
    if len(a1) != len(a2):
        raise RuntimeError(f"{type(dense).__name__} ran a different set of layers on two window "
                           f"sizes; give tile_size explicitly")

    def affine_sqrt(b1, b2, t):
        # bytes = c * side_h * side_w with sides affine in t: sqrt(bytes) is affine in t
        r1, r2 = math.sqrt(b1), math.sqrt(b2)
        return max(0.0, r1 + (r2 - r1) * (t - t1) / (t2 - t1)) ** 2

    def estimate(t):
        acts = [affine_sqrt(b1, b2, t) for b1, b2 in zip(a1, a2)]
        return batch_size * (4 * max(acts[:-1] or [0.0]) + acts[-1] + affine_sqrt(in1, in2, t))

    budget = float(memory_mb) * 2 ** 20
    device_mb = runtime.device_memory_budget_mb(_param_dtype_device(dense)[1])
    if device_mb is not None:          # CUDA: never more than half of what the device has free now
        budget = min(budget, device_mb * 2 ** 20)
    if estimate(1) > budget:
        warnings.warn(f"memory_mb={memory_mb} is below what one output cell of "
                      f"{type(dense).__name__} needs (about {estimate(1) / 2**20:.0f} MB at "
                      f"batch {batch_size}); using the smallest tile", stacklevel=2)
        return s
    lo, hi = 1, max(1, max_size // s)
    if estimate(hi) <= budget:
        return hi * s
    while hi - lo > 1:  # estimate is increasing in t: largest t with estimate(t) <= budget
        mid = (lo + hi) // 2
        if estimate(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo * s
