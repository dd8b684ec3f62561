"""fcnseg.data.regions: a region read alone equals the same region of the whole-image path
(read_image), for every TIFF layout read by region; pyramid levels; truncated and corrupt tiles
named with their region; formats without regions decoded whole within max_image_pixels; OpenSlide
through a stand-in module."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from PIL import Image

from fcnseg.data import ImageReadError, read_image
from fcnseg.data.regions import DecodedImage, SlideRegions, TiffRegions, open_image

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("zarr")

H, W = 83, 101  # neither side a multiple of the tiles or strips


def _pixels(channels: int, dtype) -> np.ndarray:
    rng = np.random.default_rng(channels)
    hi = np.iinfo(dtype).max
    return rng.integers(0, hi, (H, W, channels), dtype=dtype, endpoint=True)


REGIONS = [(0, 0, H, W), (5, 7, 20, 30), (31, 63, 52, 38), (82, 100, 1, 1)]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("layout", ["tiled", "striped", "planar"])
def test_region_equals_whole_image_path(tmp_path, dtype, channels, layout):
    px = _pixels(channels, dtype)
    data = px[:, :, 0] if channels == 1 else px
    opts = {"tiled": dict(tile=(32, 48)), "striped": dict(rowsperstrip=10),
            "planar": dict(tile=(32, 32), planarconfig="separate")}[layout]
    if layout == "planar" and channels == 1:
        opts = dict(tile=(32, 32))
    if channels == 4:
        opts["extrasamples"] = ["unassalpha"]
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.moveaxis(data, 2, 0) if layout == "planar" and channels > 1 else data,
                     photometric="rgb" if channels > 1 else "minisblack", compression="zlib", **opts)
    whole = read_image(path)
    assert whole.shape == (H, W, channels) and np.array_equal(whole, px)  # the reference itself
    with open_image(path) as src:
        assert isinstance(src, TiffRegions) and (src.height, src.width) == (H, W)
        for top, left, h, w in REGIONS:
            got = src.read(top, left, h, w)
            assert got.dtype == dtype and np.array_equal(got, whole[top:top + h, left:left + w]), (top, left)


def test_small_tiff_below_threshold_decoded_whole_like_today(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, _pixels(3, np.uint8), photometric="rgb", tile=(32, 32))
    src = open_image(path, whole_up_to_pixels=H * W)
    assert isinstance(src, DecodedImage) and np.array_equal(src.read_all(), read_image(path))
    assert isinstance(open_image(path, whole_up_to_pixels=H * W - 1), TiffRegions)


def test_palette_tiff_is_decoded_whole_not_misread(tmp_path):
    """tifffile gives palette indices where Pillow gives colours: such layouts take the whole path."""
    idx = np.random.default_rng(0).integers(0, 4, (H, W), dtype=np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[0, :4] = [0, 65535, 0, 30000]
    path = tmp_path / "p.tif"
    tifffile.imwrite(path, idx, photometric="palette", colormap=cmap, tile=(32, 32))
    src = open_image(path)
    assert isinstance(src, DecodedImage)
    assert np.array_equal(src.read(3, 4, 10, 10), read_image(path)[3:13, 4:14])


def _write_pyramid(path, base: np.ndarray, levels: int):
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(base, tile=(32, 32), subifds=levels - 1, photometric="minisblack")
        for k in range(1, levels):
            tw.write(base[::2 ** k, ::2 ** k], tile=(32, 32), subfiletype=1, photometric="minisblack")


def test_pyramid_level_and_ome_tiff(tmp_path):
    base = _pixels(1, np.uint8)[:, :, 0]
    _write_pyramid(tmp_path / "p.tif", base, 3)
    with open_image(tmp_path / "p.tif", level=2) as src:
        assert (src.height, src.width) == base[::4, ::4].shape
        assert np.array_equal(src.read(2, 3, 10, 12)[:, :, 0], base[::4, ::4][2:12, 3:15])
    with pytest.raises(ImageReadError, match=r"level=3, but the file holds 3 level\(s\)"):
        open_image(tmp_path / "p.tif", level=3)
    rgb = _pixels(3, np.uint16)
    tifffile.imwrite(tmp_path / "o.ome.tif", np.moveaxis(rgb, 2, 0), tile=(32, 32), metadata={"axes": "CYX"})
    with open_image(tmp_path / "o.ome.tif") as src:
        assert np.array_equal(src.read(10, 20, 30, 40), rgb[10:40, 20:60])
    Image.fromarray(base).save(tmp_path / "x.png")
    with pytest.raises(ImageReadError, match="has one level"):
        open_image(tmp_path / "x.png", level=1)


def _tiled_file(tmp_path, name="t.tif"):
    px = np.random.default_rng(1).integers(0, 255, (128, 96), dtype=np.uint8)
    path = tmp_path / name
    tifffile.imwrite(path, px, tile=(32, 32), compression="zlib", bigtiff=True)
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        return path, px, list(page.dataoffsets), list(page.databytecounts)


def test_corrupt_tile_names_file_and_region(tmp_path):
    path, px, offsets, counts = _tiled_file(tmp_path)
    with open(path, "r+b") as f:  # tile 7: row 2 (rows 64..95), column 1 (cols 32..63) of 3 across
        f.seek(offsets[7] + 2)
        f.write(b"\xff" * (counts[7] - 4))
    with open_image(path) as src:
        assert np.array_equal(src.read(0, 0, 64, 96)[:, :, 0], px[:64])  # the sound tiles still read
        with pytest.raises(ImageReadError, match=r"t\.tif: region \(top, left, height, width\) = "
                                                 r"\(60, 40, 10, 10\) of level 0 cannot be decoded"):
            src.read(60, 40, 10, 10)


def test_truncated_file_names_the_first_missing_tile(tmp_path):
    path, _, offsets, counts = _tiled_file(tmp_path)
    cut = offsets[10] + counts[10] // 2  # tile 10: row 3, column 1
    with open(path, "r+b") as f:
        f.truncate(cut)
    with pytest.raises(ImageReadError, match=r"truncated: the tile at region \(top, left, height, width\) = "
                                             r"\(96, 32, 32, 32\) of level 0 lies past the end"):
        open_image(path)


def test_max_image_pixels_for_formats_without_regions(tmp_path):
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ImageReadError, match=r"a\.png: 50x40 = 2000 pixels is above max_image_pixels=1999"):
        open_image(tmp_path / "a.png", max_image_pixels=1999)
    with pytest.raises(ImageReadError, match="max_image_pixels=1999"):
        read_image(tmp_path / "a.png", max_image_pixels=1999)
    assert open_image(tmp_path / "a.png", max_image_pixels=2000).read_all().shape == (40, 50, 1)


def test_pillow_bomb_guard_replaced_by_the_setting(tmp_path, monkeypatch):
    """Pillow's own guard (an error at twice its limit) never fires: the project's limit decides."""
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((40, 50), np.uint8), tile=(32, 32))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for name in ("a.png", "a.tif"):
        assert read_image(tmp_path / name).shape == (40, 50, 1)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored


class _FakeSlide:
    """The part of openslide.OpenSlide the reader uses, over an RGBA array with two levels."""

    def __init__(self, path):
        rng = np.random.default_rng(3)
        self.base = rng.integers(0, 256, (64, 80, 4), dtype=np.uint8)
        self.base[:8, :, 3] = 0         # outside the scanned area: transparent
        self.level_count = 2
        self.level_dimensions = [(80, 64), (40, 32)]
        self.level_downsamples = [1.0, 2.0]
        self.properties = {"openslide.background-color": "F0E0D0"}
        self.closed = False

    def read_region(self, location, level, size):
        x, y = location
        w, h = size
        d = int(self.level_downsamples[level])
        return Image.fromarray(self.base[::d, ::d][y // d:y // d + h, x // d:x // d + w], "RGBA")

    def close(self):
        self.closed = True


def test_openslide_reader_with_a_stand_in_module(tmp_path, monkeypatch):
    path = tmp_path / "s.svs"
    path.write_bytes(b"not read by the stand-in")
    monkeypatch.setitem(sys.modules, "openslide", types.SimpleNamespace(OpenSlide=_FakeSlide))
    with open_image(path, level=1) as src:
        assert isinstance(src, SlideRegions) and (src.height, src.width) == (32, 40)
        got = src.read(2, 3, 10, 12)
        ref = src._slide.base[::2, ::2][2:12, 3:15].astype(np.float64)
    a = ref[:, :, 3:] / 255
    want = np.rint(ref[:, :, :3] * a + np.array([0xF0, 0xE0, 0xD0]) * (1 - a)).astype(np.uint8)
    assert got.dtype == np.uint8 and np.array_equal(got, want)
    assert np.array_equal(got[0, 0], [0xF0, 0xE0, 0xD0])  # row 4 of level 0: background
    with pytest.raises(ImageReadError, match=r"level=2, but the slide holds 2 level"):
        open_image(path, level=2)


def test_openslide_missing_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "s.ndpi"
    path.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "openslide", None)  # import openslide -> ImportError
    with pytest.raises(ImageReadError, match=r"s\.ndpi: reading whole-slide formats .*"
                                             r"pip install 'fcnseg\[slide\]'"):
        open_image(path)


def test_jpeg_compressed_ycbcr_tiff_region_equals_whole_image_path(tmp_path):
    """The usual whole-slide encoding: tiles of JPEG in YCbCr, decoded to RGB by both paths."""
    path = tmp_path / "j.tif"
    tifffile.imwrite(path, _pixels(3, np.uint8), photometric="rgb", tile=(32, 32), compression="jpeg")
    with tifffile.TiffFile(path) as tf:
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.YCBCR
    whole = read_image(path)
    with open_image(path) as src:
        assert isinstance(src, TiffRegions)
        for top, left, h, w in REGIONS:
            assert np.array_equal(src.read(top, left, h, w), whole[top:top + h, left:left + w]), (top, left)
