"""The patch-by-patch reference: crop the patch around a pixel and classify it.

Deliberately independent of the conversion code: it only pads, indexes and calls the classifier.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from .ops import as_pair, pad_image
from .runtime import reuse_host_memory


def resolve_patch_size(model: nn.Module, patch_size) -> tuple[int, int]:
    if patch_size is None:
        patch_size = getattr(model, "patch_size", None)
        if patch_size is None:
            raise ValueError(f"{type(model).__name__} has no patch_size attribute: pass patch_size=(P, Q)")
    return as_pair(patch_size)


def pixel_index(pixels, h: int, w: int, device=None) -> torch.Tensor:
    """(M, 2) long tensor of (i, j) from a boolean (H, W) mask, an index tensor, or None (all)."""
    if pixels is None:
        ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        idx = torch.stack([ii.reshape(-1), jj.reshape(-1)], 1)
    else:
        pixels = torch.as_tensor(pixels)
        if pixels.dtype == torch.bool:
            if tuple(pixels.shape) != (h, w):
                raise ValueError(f"pixel mask has shape {tuple(pixels.shape)}, the image is {h}x{w}")
            idx = pixels.nonzero()
        else:
            idx = pixels.long().reshape(-1, 2)
            if len(idx) and (idx.min() < 0 or idx[:, 0].max() >= h or idx[:, 1].max() >= w):
                raise ValueError(f"pixel indices must lie inside the {h}x{w} image")
    return idx.to(device)


def crop_patches(x: torch.Tensor, pixels: torch.Tensor, patch_size, *, pad_mode="constant",
                 pad_value=0.0, padded: torch.Tensor | None = None) -> torch.Tensor:
    """Patches (N*M, C, P, Q) around pixels (M, 2) of x (N, C, H, W), image-major; differentiable."""
    p, q = as_pair(patch_size)
    xp = pad_image(x, (p, q), pad_mode, pad_value) if padded is None else padded
    pixels = pixels.to(x.device)
    # after padding, the patch of pixel (i, j) starts at (i, j) of the padded image
    rows = pixels[:, 0, None] + torch.arange(p, device=x.device)          # (M, P)
    cols = pixels[:, 1, None] + torch.arange(q, device=x.device)          # (M, Q)
    patches = xp[:, :, rows[:, :, None], cols[:, None, :]]                # (N, C, M, P, Q)
    n, c, m = patches.shape[:3]
    return patches.permute(0, 2, 1, 3, 4).reshape(n * m, c, p, q)


def patchwise(model: nn.Module, x: torch.Tensor, patch_size=None, *, pad_mode="constant", pad_value=0.0,
              batch_size: int = 256, pixels=None) -> torch.Tensor:
    """Scores (N, K, H, W) from classifying the patch of every pixel (NaN where not requested).

    At most `batch_size` patches of one image are in memory at a time. A classifier with several
    outputs (a tuple, list or dict of per-patch tensors) gives the same structure of score maps.
    """
    if x.dim() != 4:
        raise ValueError(f"expected an image batch (N, C, H, W), got shape {tuple(x.shape)}")
    p, q = resolve_patch_size(model, patch_size)
    n, _, h, w = x.shape
    idx = pixel_index(pixels, h, w, x.device)
    xp = pad_image(x, (p, q), pad_mode, pad_value)
    outs, spec = None, None
    step = max(1, batch_size // max(n, 1))             # pixels per batch: n patches each
    with reuse_host_memory(x.device):                  # every batch's maps reuse the last batch's pages
        for start in range(0, len(idx), step):
            chunk = idx[start : start + step]
            leaves, spec = tree_flatten(model(crop_patches(x, chunk, (p, q), padded=xp)))
            for i, scores in enumerate(leaves):
                scores = scores.reshape(n, len(chunk), -1)                     # (N, M, K)
                if outs is None or len(outs) <= i:
                    outs = (outs or []) + [torch.full((n, scores.shape[-1], h, w), float("nan"),
                                                      dtype=scores.dtype, device=x.device)]
                outs[i][:, :, chunk[:, 0], chunk[:, 1]] = scores.transpose(1, 2)
    if outs is None:  # no pixel requested: still tell the caller the class counts
        leaves, spec = tree_flatten(model(torch.zeros(1, x.shape[1], p, q, dtype=x.dtype, device=x.device)))
        outs = [torch.full((n, t.reshape(1, -1).shape[1], h, w), float("nan"), dtype=x.dtype, device=x.device)
                for t in leaves]
    return tree_unflatten(outs, spec)
