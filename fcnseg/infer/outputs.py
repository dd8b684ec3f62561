"""Result files: label maps (palette PNG), colour overlays, float16 score arrays."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from fcnseg.data.io import to_channels
from fcnseg.data.palette import colorize
from fcnseg.runtime import atomic_path


def nearest_grid_index(pixels: np.ndarray, stride: int, cells: int) -> np.ndarray:
    """The output-grid cell (pixel m*s) nearest to each pixel index, inside [0, cells)."""
    return np.minimum((np.asarray(pixels) + stride // 2) // stride, cells - 1)


def to_image_size(labels: np.ndarray, height: int, width: int, stride: int) -> np.ndarray:
    """Grid labels (ceil(H/s), ceil(W/s)) -> (H, W): each pixel takes the nearest grid
    pixel (m*s, n*s). The identity at stride 1."""
    if stride == 1:
        assert labels.shape == (height, width), (labels.shape, height, width)
        return labels
    rows = nearest_grid_index(np.arange(height), stride, labels.shape[0])
    cols = nearest_grid_index(np.arange(width), stride, labels.shape[1])
    return labels[rows][:, cols]


def save_labels(path: Path, labels: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
    """(H, W) class indices -> PNG. Up to 256 classes: a palette PNG (mode "P": the pixel
    values are the class indices, viewers show the class colours); more: 16-bit gray."""
    labels = np.asarray(labels)
    if labels.size and int(labels.max()) > 255:
        img = Image.fromarray(labels.astype(np.uint16))  # mode I;16
    else:
        img = Image.fromarray(labels.astype(np.uint8))  # mode L
        flat = [v for c in list(palette)[:256] for v in c]
        img.putpalette(flat + [0] * (768 - len(flat)))  # L + palette -> P
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def display_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8/uint16 -> (H, W, 3) uint8 for looking at."""
    rgb = to_channels(image, 3)
    if rgb.dtype == np.uint16:
        rgb = (rgb >> 8).astype(np.uint8)
    return rgb


def blend_overlay(image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]],
                  alpha: float = 0.5) -> np.ndarray:
    """(H, W, C) image and (H, W) labels -> (H, W, 3) uint8: the class colours blended in."""
    base = display_rgb(image).astype(np.float32)
    colours = colorize(labels, palette, ignore_index=None).astype(np.float32)  # (H, W, 3)
    return np.rint((1 - alpha) * base + alpha * colours).clip(0, 255).astype(np.uint8)


def save_overlay(path: Path, image: np.ndarray, labels: np.ndarray,
                 palette: Sequence[Sequence[int]], alpha: float = 0.5) -> None:
    """The image with the class colours blended in (alpha = weight of the colours)."""
    out = blend_overlay(image, labels, palette, alpha)
    with atomic_path(path) as tmp:
        Image.fromarray(out).save(tmp, format="PNG")


def save_scores(path: Path, scores: torch.Tensor | np.ndarray) -> None:
    """(K, h, w) scores (a tensor or an array) -> float16 .npy."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().float().cpu().numpy()
    arr = np.asarray(scores).astype(np.float16)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)


class ScoresFile:
    """A float16 (K, h, w) .npy filled in place while tiles arrive (no copy in memory),
    published atomically on close()."""

    def __init__(self, path: Path, shape: tuple[int, int, int]):
        self._ctx = atomic_path(path)
        tmp = self._ctx.__enter__()
        self.array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)

    def close(self) -> None:
        self.array.flush()
        del self.array
        self._ctx.__exit__(None, None, None)

    def abort(self, exc: BaseException) -> None:
        self.array = None
        try:
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)
        except BaseException:
            pass
