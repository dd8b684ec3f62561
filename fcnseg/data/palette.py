"""Class colours: the default palette, completing a dataset's own, and label maps as RGB."""
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


def resolve_palette(palette: Sequence[Sequence[int]] | None, num_classes: int) -> list[list[int]]:
    """A palette with a colour for each of ``num_classes`` classes: the given colours,
    completed (or replaced when None) by the default palette."""
    if palette is None:
        return default_palette(num_classes)
    pal = [list(map(int, c)) for c in palette]
    if len(pal) < num_classes:
        pal += default_palette(num_classes)[len(pal):]
    return pal


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int | None = 255,
             ignore_color: Sequence[int] = (255, 255, 255)) -> np.ndarray:
    """``(H, W)`` class indices -> ``(H, W, 3)`` uint8 RGB. ``ignore_index`` (None: no such
    label) and labels without a colour (negative, or past the palette) get ``ignore_color``."""
    pal = np.asarray(palette, np.uint8).reshape(-1, 3)  # (K, 3)
    # one spare row past every colour (and past 255) holds ignore_color for unknown labels
    lut = np.tile(np.asarray(ignore_color, np.uint8), (max(256, len(pal)) + 1, 1))
    lut[: len(pal)] = pal
    if ignore_index is not None:
        lut[ignore_index] = ignore_color
    return lut[np.asarray(mask, dtype=np.int64).clip(-1, len(lut) - 1)]  # -1: the spare row
