"""Class colour palettes and mask colouring for visualisation."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def default_palette(num_classes: int) -> list[list[int]]:
    """The Pascal VOC colour map: class bits spread over the high bits of R, G, B.

    Class 0 is black and neighbouring indices get clearly different colours; distinct for up to
    256 classes, so it serves any dataset that ships no palette of its own.
    """
    palette = []
    for k in range(num_classes):
        r = g = b = 0
        c = k
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255,
             ignore_color: Sequence[int] = (255, 255, 255)) -> np.ndarray:
    """``(H, W)`` class indices -> ``(H, W, 3)`` uint8 RGB; ignored and unknown labels get ``ignore_color``."""
    lut = np.tile(np.asarray(ignore_color, np.uint8), (256, 1))  # (256, 3)
    pal = np.asarray(palette, np.uint8).reshape(-1, 3)[:256]
    lut[: len(pal)] = pal
    lut[ignore_index] = ignore_color
    return lut[np.asarray(mask, dtype=np.int64).clip(0, 255)]
