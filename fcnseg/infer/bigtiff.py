"""Result files of large images: tiled BigTIFF written tile by tile, never whole in memory.

Labels: a pyramidal BigTIFF (tiles of 512, zlib): the full-resolution map in the first image,
2x, 4x, ... reductions (nearest, i.e. every 2nd, 4th, ... pixel) in its SubIFDs until the
smallest fits one tile (at most 8 levels): the SubIFD pyramid Bio-Formats (QuPath) and
tifffile (napari) read. Up to 256 classes the samples are uint8 class indices with the
checkpoint's palette as the TIFF colour map (photometric palette: viewers show the class
colours, the values stay the indices), else uint16 gray.
Scores: float16 (K, h, w) on the output grid, one plane per class, same tiles, no pyramid.
No date, software or description tags are written: the same labels give the same bytes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from fcnseg.extras import require

TILE = 512
MAX_LEVELS = 8

# (rows, cols) full-resolution pixel indices -> (len(rows), len(cols)) labels
PixelReader = Callable[[np.ndarray, np.ndarray], np.ndarray]


def pyramid_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """(h, w) of each level: level k is every 2**k-th pixel of the full map."""
    shapes = [(height, width)]
    while max(shapes[-1]) > TILE and len(shapes) < MAX_LEVELS:
        k = len(shapes)
        shapes.append((-(-height // 2 ** k), -(-width // 2 ** k)))
    return shapes


def _tiles(read_band: Callable[[int, int], np.ndarray], height: int, width: int, dtype) -> Iterator[np.ndarray]:
    """Tiles in TIFF order (rows of tiles, left to right), edge tiles zero-padded; one band of
    TILE rows (read_band(top, bottom) -> (rows, width)) in memory at a time."""
    for top in range(0, height, TILE):
        band = read_band(top, min(top + TILE, height))
        for left in range(0, width, TILE):
            tile = np.zeros((TILE, TILE), dtype)
            part = band[:, left:left + TILE]
            tile[:part.shape[0], :part.shape[1]] = part
            yield tile


# no ImageDescription (metadata=None), Software or DateTime tag: nothing that changes between runs
_OPTIONS = dict(tile=(TILE, TILE), compression="zlib", metadata=None, software=False)


def _colormap(palette: Sequence[Sequence[int]]) -> np.ndarray:
    """(3, 256) uint16 TIFF colour map from 8-bit RGB colours (v * 257 maps 255 to 65535)."""
    cmap = np.zeros((3, 256), np.uint16)
    colours = np.asarray(list(palette)[:256], np.uint16).reshape(-1, 3)
    cmap[:, :len(colours)] = colours.T * 257
    return cmap


def write_label_pyramid(path: Path, read_pixels: PixelReader, height: int, width: int, num_classes: int,
                        palette: Sequence[Sequence[int]]) -> None:
    """Write the (height, width) label map, read band by band through read_pixels, as a pyramid."""
    tifffile = require("tifffile", "writing large images as tiled BigTIFF")
    shapes = pyramid_shapes(height, width)
    dtype = np.uint8 if num_classes <= 256 else np.uint16
    colour = dict(photometric="palette", colormap=_colormap(palette)) if dtype == np.uint8 \
        else dict(photometric="minisblack")
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k, (h, w) in enumerate(shapes):
            step = 2 ** k
            cols = np.arange(w) * step

            def band(top, bottom, step=step, cols=cols):
                return read_pixels(np.arange(top, bottom) * step, cols).astype(dtype, copy=False)

            level = dict(subifds=len(shapes) - 1) if k == 0 else dict(subfiletype=1)
            tw.write(_tiles(band, h, w, dtype), shape=(h, w), dtype=dtype, **level, **colour,
                     **_OPTIONS)


def write_scores(path: Path, read_rows: Callable[[int, int, int], np.ndarray], channels: int,
                 rows: int, cols: int) -> None:
    """Write float16 scores (channels, rows, cols); read_rows(k, top, bottom) -> (bottom - top, cols)."""
    tifffile = require("tifffile", "writing large images as tiled BigTIFF")

    def planes():
        for k in range(channels):
            yield from _tiles(lambda top, bottom, k=k: read_rows(k, top, bottom), rows, cols, np.float16)

    shape = (channels, rows, cols) if channels > 1 else (rows, cols)
    planar = dict(planarconfig="separate") if channels > 1 else {}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(planes(), shape=shape, dtype=np.float16, photometric="minisblack", **planar,
                 **_OPTIONS)
