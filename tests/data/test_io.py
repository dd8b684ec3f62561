"""fcnseg.data.io: decoding (bit depth, channels, EXIF orientation), channel conversion,
normalisation and mask reading."""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from fcnseg.data import (
    DatasetError, ImageReadError, apply_orientation, normalize, prepare_image, read_image, read_mask, to_channels,
    to_float,
)

from helpers import save_gray, save_palette_mask, save_rgb


def test_gray_and_rgb_png_shapes_and_channel_order(tmp_path):
    g = np.arange(35, dtype=np.uint8).reshape(5, 7)
    out = read_image(save_gray(tmp_path / "g.png", g))
    assert out.shape == (5, 7, 1) and out.dtype == np.uint8 and np.array_equal(out[:, :, 0], g)
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0] = 200  # red only: a BGR reader would put it in channel 2
    out = read_image(save_rgb(tmp_path / "c.png", rgb))
    assert out.shape == (5, 7, 3) and np.array_equal(out, rgb)


def test_16bit_png_keeps_depth_gray_and_colour(tmp_path):
    g = (np.arange(6 * 4, dtype=np.uint16).reshape(6, 4) * 2731)  # values above 255
    cv2.imwrite(str(tmp_path / "g16.png"), g)
    out = read_image(tmp_path / "g16.png")
    assert out.dtype == np.uint16 and out.shape == (6, 4, 1) and np.array_equal(out[:, :, 0], g)
    rgb = np.zeros((6, 4, 3), np.uint16)
    rgb[..., 0] = 60000
    rgb[..., 2] = 300
    cv2.imwrite(str(tmp_path / "c16.png"), rgb[:, :, ::-1])  # OpenCV writes BGR
    out = read_image(tmp_path / "c16.png")
    assert out.dtype == np.uint16 and np.array_equal(out, rgb)
    assert to_float(out)[0, 0, 0] == pytest.approx(60000 / 65535)


def test_rgba_keeps_alpha_and_to_channels_drops_it(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 1] = 90
    rgba[..., 3] = 10
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (4, 5, 4) and np.array_equal(out, rgba)
    assert np.array_equal(to_channels(out, 3), rgba[..., :3])


def _exif_jpeg(path: Path, arr: np.ndarray, orientation: int) -> Path:
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif.tobytes(), quality=95)
    return path


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    stored = np.zeros((10, 20, 3), np.uint8)  # H=10, W=20 as stored
    stored[:, :10] = (255, 0, 0)  # left half red
    stored[:, 10:] = (0, 0, 255)  # right half blue
    out = read_image(_exif_jpeg(tmp_path / "r.jpg", stored, 6))  # 6: display rotated 90 degrees clockwise
    assert out.shape == (20, 10, 3)
    assert out[3, 5, 0] > 200 and out[3, 5, 2] < 60   # the left side is now on top
    assert out[16, 5, 2] > 200 and out[16, 5, 0] < 60


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_pillow(orientation):
    arr = np.random.default_rng(orientation).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    img.getexif()[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(img))
    assert np.array_equal(apply_orientation(arr, orientation), expected)


def test_to_channels_formulas():
    rgb = np.array([[[255, 0, 0], [10, 200, 30], [0, 0, 255]]], np.uint8)  # (1, 3, 3)
    gray = to_channels(rgb, 1)
    # ITU-R 601: 0.299*255 = 76.2 -> 76; 0.299*10 + 0.587*200 + 0.114*30 = 123.81 -> 124; 0.114*255 = 29.07 -> 29
    assert gray.shape == (1, 3, 1) and gray[0, :, 0].tolist() == [76, 124, 29]
    assert np.array_equal(np.asarray(Image.fromarray(rgb).convert("L")), gray[:, :, 0])  # same as Pillow
    back = to_channels(gray, 3)
    assert back.shape == (1, 3, 3) and (back == gray).all()
    g16 = np.array([[[65535, 65535, 0]]], np.uint16)
    assert to_channels(g16, 1).dtype == np.uint16 and int(to_channels(g16, 1)[0, 0, 0]) == round(0.886 * 65535)
    rgba = to_channels(gray, 4)
    assert rgba.shape == (1, 3, 4) and (rgba[..., 3] == 255).all()
    with pytest.raises(ValueError, match="channels must be"):
        to_channels(rgb, 2)


def test_normalize_and_prepare():
    img = np.full((2, 3, 3), 255, np.uint8)
    t = prepare_image(img, 3, [0.5, 0.25, 0.0], [0.5, 0.25, 2.0])
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    assert torch.allclose(t[:, 0, 0], torch.tensor([1.0, 3.0, 0.5]))
    with pytest.raises(ValueError, match="mean has 1"):
        normalize(to_float(img), [0.5], [0.5])


def test_read_mask_palette_gives_indices_not_colours(tmp_path):
    labels = np.array([[0, 15, 255], [3, 3, 20]], np.uint8)
    out = read_mask(save_palette_mask(tmp_path / "m.png", labels))
    assert out.dtype == np.uint8 and np.array_equal(out, labels)


def test_read_mask_refuses_colour_masks(tmp_path):
    p = save_rgb(tmp_path / "m.png", np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(ImageReadError, match="single-channel") as e:
        read_mask(p)
    assert str(p) in str(e.value) and "Fix" in str(e.value)


def test_missing_empty_truncated_and_non_image_files(tmp_path):
    with pytest.raises(ImageReadError, match="not found") as e:
        read_image(tmp_path / "nope.png")
    assert str(tmp_path / "nope.png") in str(e.value)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "notes.png").write_text("this is not an image")
    with pytest.raises(ImageReadError, match="not an image"):
        read_image(tmp_path / "notes.png")
    rng = np.random.default_rng(0)
    for ext in ("png", "jpg"):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG" if ext == "png" else "JPEG")
        data = buf.getvalue()
        p = tmp_path / f"cut.{ext}"
        p.write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageReadError, match="truncated") as e:
            read_image(p)
        assert isinstance(e.value, DatasetError) and isinstance(e.value, ValueError)
