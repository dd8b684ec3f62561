"""Images read region by region, so that a gigapixel slide never has to fit in memory.

``open_image(path)`` reads the header only and returns an :class:`ImageSource`;
``source.read(top, left, height, width)`` returns that region as ``(h, w, C)`` uint8/uint16, the
same pixels :func:`fcnseg.data.io.read_image` gives for it when it decodes the whole file (channel
order, bit depth and alpha handling included), so every later step (channel conversion,
normalisation) is the one of the whole-image path.

- Tiled or striped TIFF, BigTIFF and OME-TIFF go through tifffile's zarr view, which decodes only
  the tiles or strips a region touches; ``level`` picks a pyramid level (0: full resolution).
  tifffile, zarr and imagecodecs are the optional extra ``large``.
- Whole-slide formats (svs, ndpi, mrxs, ...) go through OpenSlide, the optional extra ``slide``.
- Every other format (PNG, JPEG, ...), and the TIFF layouts Pillow and tifffile decode differently
  (palette, min-is-white, associated alpha, bilevel, a rotated orientation), is decoded whole on the
  first read, refused above ``max_image_pixels``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fcnseg.extras import MissingExtraError, require

from .errors import ImageReadError
from .io import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, check_pixel_limit, read_image, read_image_size

#: Whole-slide scanner formats read through OpenSlide.
SLIDE_EXTENSIONS = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
TIFF_EXTENSIONS = (".tif", ".tiff")
#: Every extension :func:`open_image` reads (OpenSlide's only when it is installed).
READABLE_EXTENSIONS = IMAGE_EXTENSIONS + SLIDE_EXTENSIONS


class NoRegionReader(ImageReadError):
    """This TIFF cannot be read by region here (tifffile missing, or a TIFF it cannot parse); it may
    still be decoded whole."""


class ImageSource:
    """An opened image: ``height``, ``width`` and ``read`` of any region; ``by_region`` says whether
    a region is decoded alone (else the whole image is decoded on the first read and kept)."""

    path: Path
    height: int
    width: int
    by_region: bool = True

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        raise NotImplementedError

    def read_all(self) -> np.ndarray:
        return self.read(0, 0, self.height, self.width)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_region(self, top: int, left: int, height: int, width: int) -> None:
        if top < 0 or left < 0 or height <= 0 or width <= 0 or top + height > self.height \
                or left + width > self.width:
            raise ValueError(f"{self.path}: region (top, left, height, width) = "
                             f"{(top, left, height, width)} is not inside the {self.height}x{self.width} image")


class DecodedImage(ImageSource):
    """A format without regions (PNG, JPEG, ...): decoded whole by read_image on the first read."""

    by_region = False

    def __init__(self, path: Path, height: int, width: int, max_image_pixels: int | None):
        self.path, self.height, self.width = path, height, width
        self._max_pixels = max_image_pixels
        self._pixels: np.ndarray | None = None

    def read(self, top, left, height, width):
        self._check_region(top, left, height, width)
        if self._pixels is None:
            self._pixels = read_image(self.path, max_image_pixels=self._max_pixels)
        return self._pixels[top:top + height, left:left + width]

    def close(self) -> None:
        self._pixels = None


def _import_large(path: Path):
    try:
        return require("tifffile", "reading TIFF files by region"), require("zarr", "reading TIFF files by region")
    except MissingExtraError as e:
        raise NoRegionReader(path, str(e)) from None


def _layout_problem(page) -> str | None:
    """Why this page's pixels would differ from what Pillow/OpenCV decode whole (None: they agree)."""
    from tifffile import EXTRASAMPLE, ORIENTATION, PHOTOMETRIC

    if page.dtype not in (np.uint8, np.uint16):
        return f"samples of type {page.dtype} (8- or 16-bit unsigned integers are read by region)"
    orientation = getattr(page, "orientation", ORIENTATION.TOPLEFT)
    if orientation not in (None, ORIENTATION.TOPLEFT):
        return f"orientation {orientation!r}"
    photometric, spp = page.photometric, page.samplesperpixel
    if photometric == PHOTOMETRIC.MINISBLACK and spp == 1:
        return None
    if photometric == PHOTOMETRIC.RGB and spp == 3:
        return None
    if photometric == PHOTOMETRIC.RGB and spp == 4 and tuple(page.extrasamples) == (EXTRASAMPLE.UNASSALPHA,):
        return None
    if photometric == PHOTOMETRIC.YCBCR and page.compression == 7:  # JPEG: decoded to RGB
        return None
    return f"photometric {photometric!r} with {spp} samples per pixel"


def _segment_region(page, index: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) in the page of its data segment (tile or strip) ``index``."""
    H, W = page.imagelength, page.imagewidth
    if page.is_tiled:
        th, tw = page.tilelength, page.tilewidth
        across, down = -(-W // tw), -(-H // th)
        index %= across * down                    # planar files repeat the grid per sample
        r, c = divmod(index, across)
        return r * th, c * tw, min(th, H - r * th), min(tw, W - c * tw)
    rps = min(page.rowsperstrip or H, H)
    index %= -(-H // rps)
    return index * rps, 0, min(rps, H - index * rps), W


class TiffRegions(ImageSource):
    """A (Big/OME-)TIFF pyramid level read region by region through tifffile's zarr view."""

    def __init__(self, path: Path, level: int = 0):
        tifffile, zarr = _import_large(path)
        self.path = path
        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as e:
            raise NoRegionReader(path, f"not a TIFF file tifffile can read ({type(e).__name__}: {e}); "
                                       "re-export it as a tiled TIFF") from None
        try:
            self._open_level(zarr, level)
        except BaseException:
            self._tif.close()
            raise

    def _open_level(self, zarr, level: int) -> None:
        series = self._tif.series[0]
        if not 0 <= level < len(series.levels):
            raise ImageReadError(self.path, f"level={level}, but the file holds {len(series.levels)} "
                                            f"level(s) (0..{len(series.levels) - 1}); pick one of them")
        lv = series.levels[level]
        self.level, self.problem = level, _layout_problem(lv.keyframe)
        axes = lv.axes
        extra = [a for a, n in zip(axes, lv.shape) if a not in "YX" and n > 1]
        if "Y" not in axes or "X" not in axes or len(extra) > 1 or \
                (extra and lv.shape[axes.index(extra[0])] not in (1, 3, 4)):
            raise ImageReadError(self.path, f"image of axes {axes!r} and shape {lv.shape}: one 2-D plane "
                                            "of 1, 3 or 4 channels is expected; save one plane per file")
        self._axes, self._channel_axis = axes, (axes.index(extra[0]) if extra else None)
        self.height, self.width = lv.shape[axes.index("Y")], lv.shape[axes.index("X")]
        self._check_segments(lv.pages)
        self._array = zarr.open(series.aszarr(level=level), mode="r")

    def _check_segments(self, pages) -> None:
        """A truncated file: name the first tile or strip that lies past its end."""
        size = os.path.getsize(self.path)
        for page in pages:
            if page is None or not hasattr(page, "dataoffsets"):
                continue
            ends = np.asarray(page.dataoffsets, np.int64) + np.asarray(page.databytecounts, np.int64)
            past = np.flatnonzero(ends > size)
            if past.size:
                region = _segment_region(page, int(past[0]))
                kind = "tile" if page.is_tiled else "strip"
                raise ImageReadError(
                    self.path, f"truncated: the {kind} at region (top, left, height, width) = {region} of "
                    f"level {self.level} lies past the end of the file ({size} bytes); re-copy the file")

    def read(self, top, left, height, width):
        self._check_region(top, left, height, width)
        sel = [slice(None)] * len(self._axes)
        sel[self._axes.index("Y")] = slice(top, top + height)
        sel[self._axes.index("X")] = slice(left, left + width)
        try:
            block = np.asarray(self._array[tuple(sel)])
        except Exception as e:
            raise ImageReadError(
                self.path, f"region (top, left, height, width) = {(top, left, height, width)} of level "
                f"{self.level} cannot be decoded ({type(e).__name__}: {e}): the tile data there is corrupt; "
                "re-copy or re-export the file") from None
        # the remaining axes are singletons except Y, X and the channels: order them (Y, X, C)
        keep = [i for i, a in enumerate(self._axes) if a in "YX" or i == self._channel_axis]
        block = block.reshape([block.shape[i] for i in keep])
        order = [keep.index(self._axes.index("Y")), keep.index(self._axes.index("X"))]
        if self._channel_axis is not None:
            order.append(keep.index(self._channel_axis))
        block = block.transpose(order)
        return np.ascontiguousarray(block if block.ndim == 3 else block[:, :, None])

    def close(self) -> None:
        self._tif.close()


class SlideRegions(ImageSource):
    """A whole-slide image level through OpenSlide, as RGB over the slide's background colour."""

    def __init__(self, path: Path, level: int = 0):
        try:
            openslide = require("openslide", "reading whole-slide formats (OpenSlide, which also needs the "
                                             "OpenSlide library: apt install libopenslide0)")
        except MissingExtraError as e:
            raise ImageReadError(path, str(e)) from None
        self.path, self.level, self._error = path, level, getattr(openslide, "OpenSlideError", OSError)
        try:
            self._slide = openslide.OpenSlide(str(path))
        except Exception as e:
            raise ImageReadError(path, f"OpenSlide cannot open it ({type(e).__name__}: {e}); check the "
                                       "file (and, for mrxs, the folder of the same name beside it)") from None
        if not 0 <= level < self._slide.level_count:
            n = self._slide.level_count
            self._slide.close()
            raise ImageReadError(path, f"level={level}, but the slide holds {n} level(s) (0..{n - 1}); pick one")
        self.width, self.height = self._slide.level_dimensions[level]
        self._downsample = float(self._slide.level_downsamples[level])
        bg = str(self._slide.properties.get("openslide.background-color", "FFFFFF"))
        self._background = np.array([int(bg[i:i + 2], 16) for i in (0, 2, 4)], np.float64)

    def read(self, top, left, height, width):
        self._check_region(top, left, height, width)
        origin = (int(round(left * self._downsample)), int(round(top * self._downsample)))  # level 0, (x, y)
        try:
            rgba = np.asarray(self._slide.read_region(origin, self.level, (width, height)), np.float64)
        except Exception as e:
            raise ImageReadError(
                self.path, f"region (top, left, height, width) = {(top, left, height, width)} of level "
                f"{self.level} cannot be read ({type(e).__name__}: {e}); the slide data there is corrupt") from None
        alpha = rgba[:, :, 3:] / 255.0  # OpenSlide: transparent outside the scanned area
        rgb = rgba[:, :, :3] * alpha + self._background * (1.0 - alpha)
        return np.rint(rgb).astype(np.uint8)

    def close(self) -> None:
        self._slide.close()


def open_image(path: str | os.PathLike, *, level: int = 0, max_image_pixels: int | None = MAX_IMAGE_PIXELS,
               whole_up_to_pixels: int = 0) -> ImageSource:
    """Open an image for reading by region (its header only).

    level: the pyramid level of a TIFF or slide (0: full resolution). max_image_pixels: the largest
    image decoded whole (formats without regions); above it an ImageReadError names the setting.
    whole_up_to_pixels: TIFFs of at most this many pixels at level 0 are decoded whole by read_image,
    as every small image is. Without tifffile, TIFFs are decoded whole within max_image_pixels.
    """
    path = Path(path)
    if not path.is_file():
        read_image_size(path)  # the one message for a missing file, a folder or an empty file
    suffix = path.suffix.lower()
    if suffix in SLIDE_EXTENSIONS:
        return SlideRegions(path, level)
    if suffix in TIFF_EXTENSIONS and path.stat().st_size > 0:
        try:
            source = TiffRegions(path, level)
        except NoRegionReader as e:
            if level:
                raise
            height, width = read_image_size(path)
            try:
                check_pixel_limit(path, height, width, max_image_pixels)
            except ImageReadError as too_large:
                raise ImageReadError(path, f"{too_large.reason}; this one cannot be: {e.reason}") from None
            return DecodedImage(path, height, width, max_image_pixels)
        if level == 0 and (source.problem or source.height * source.width <= whole_up_to_pixels):
            height, width = source.height, source.width
            source.close()
            check_pixel_limit(path, height, width, max_image_pixels)
            return DecodedImage(path, height, width, max_image_pixels)
        if source.problem:
            source.close()
            raise ImageReadError(path, f"level={level} cannot be read: {source.problem}; convert the file "
                                       "to a tiled 8- or 16-bit gray/RGB(A) TIFF")
        return source
    if level:
        raise ImageReadError(path, f"level={level}: a {suffix or 'extensionless'} file has one level; use level=0")
    height, width = read_image_size(path)
    check_pixel_limit(path, height, width, max_image_pixels)
    return DecodedImage(path, height, width, max_image_pixels)
