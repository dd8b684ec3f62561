"""Reading images and masks, channel conversion and normalisation.

Conventions used everywhere in fcnseg:
- an image is a ``numpy`` array ``(H, W, C)`` with ``C`` in {1, 3, 4}, dtype ``uint8`` or ``uint16``,
  channels in RGB(A) order, EXIF orientation already applied (so it matches what a viewer shows
  and what annotators drew on);
- a mask is a ``numpy`` array ``(H, W)`` of ``uint8`` class indices (255 = ignore by convention);
- a network input is a ``torch.float32`` tensor ``(C, H, W)``: ``(x / max_value - mean) / std``.

Decoding goes through Pillow, which verifies the whole stream (so a truncated file raises instead of
coming back half grey, as OpenCV's decoders do), except for 16-bit PNG/TIFF, which Pillow
reduces to 8 bits: those are decoded by OpenCV with ``IMREAD_UNCHANGED``, which keeps the full
depth but ignores EXIF, so the orientation is then applied by :func:`apply_orientation`.

Pillow's own guard against decompression bombs (a fixed 179-megapixel limit, an error at twice
that) is replaced by the caller's ``max_image_pixels``, checked on the header before any pixel is
decoded. Files too large to decode whole are read region by region (``fcnseg.data.regions``).
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from fcnseg.extras import require

from .errors import ImageReadError

#: Extensions that dataset scanners treat as images.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: ITU-R BT.601 luma weights (the ones JPEG, Pillow's ``convert("L")`` and OpenCV use).
LUMA_601 = (0.299, 0.587, 0.114)

#: Largest image (height x width) decoded whole by default: a 32768 x 32768 picture, 3 GiB as RGB
#: (its decoder holds a second copy while converting). It is also OpenCV's default limit, which
#: decodes the 16-bit files (environment variable ``OPENCV_IO_MAX_IMAGE_PIXELS``).
MAX_IMAGE_PIXELS = 2 ** 30

_EXIF_ORIENTATION = 0x0112
_OPENCV_DEFAULT_MAX_PIXELS = 2 ** 30
_pillow_limit_lock = threading.Lock()
_pillow_limit_users = 0
_pillow_limit_saved = Image.MAX_IMAGE_PIXELS
_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(path, "file not found; check the path (and the dataset root) or restore the file")
    if not path.is_file():
        raise ImageReadError(path, "is not a regular file; point to an image file, not a directory")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes); re-copy or re-export it, or remove it from the dataset")


@contextlib.contextmanager
def _without_pillow_pixel_limit():
    """Pillow checks its global MAX_IMAGE_PIXELS when a file is opened and (TIFF) loaded; lift it
    while any reader here is inside this block (counted, so concurrent readers neither serialise
    nor restore it under each other): the caller's own limit has been checked on the header."""
    global _pillow_limit_users, _pillow_limit_saved
    with _pillow_limit_lock:
        if _pillow_limit_users == 0:
            _pillow_limit_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _pillow_limit_users += 1
    try:
        yield
    finally:
        with _pillow_limit_lock:
            _pillow_limit_users -= 1
            if _pillow_limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _pillow_limit_saved


def check_pixel_limit(path: str | os.PathLike, height: int, width: int, max_image_pixels: int | None) -> None:
    """Refuse to decode an image of more than ``max_image_pixels`` pixels whole (None: no limit)."""
    if max_image_pixels is not None and height * width > max_image_pixels:
        raise ImageReadError(
            path, f"{width}x{height} = {height * width} pixels is above max_image_pixels={max_image_pixels}, "
            "the largest image decoded whole (this format cannot be read by region); raise max_image_pixels "
            "if the file is trusted and the memory is there (3 bytes a pixel for RGB, twice while decoding), "
            "or convert it to a tiled TIFF, which is read region by region")


def _open_header(path: Path) -> Image.Image:
    """Open with Pillow, which reads the header only."""
    try:
        with _without_pillow_pixel_limit():
            return Image.open(path)
    except UnidentifiedImageError:
        raise ImageReadError(
            path, "not an image file Pillow can decode; remove it from the image folder or convert it to PNG/JPEG"
        ) from None
    except OSError as e:
        raise ImageReadError(path, f"cannot be opened ({e}); check permissions or re-copy the file") from None


def _open_verified(path: Path, max_image_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open with Pillow and decode the full stream, so that corrupt data raises here."""
    img = _open_header(path)
    try:
        check_pixel_limit(path, img.height, img.width, max_image_pixels)
    except ImageReadError:
        img.close()
        raise
    try:
        with _without_pillow_pixel_limit():
            img.load()
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error ... on bad streams
        raise ImageReadError(
            path, f"truncated or corrupt image data ({e}); re-download/re-export the file or remove it"
        ) from None
    return img


def _png_bit_depth(path: Path) -> int:
    # IHDR is always the first chunk: 8-byte signature, 4-byte length, b"IHDR", width, height, bit depth.
    with open(path, "rb") as f:
        head = f.read(25)
    if len(head) == 25 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return 8


def _is_16bit(path: Path, img: Image.Image) -> bool:
    if img.format == "PNG":
        return _png_bit_depth(path) == 16
    if img.format == "TIFF":
        bits = img.tag_v2.get(258, (8,))  # BitsPerSample, one entry per channel
        bits = bits if isinstance(bits, tuple) else (bits,)
        return max(bits) > 8
    return False


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation value (1..8) to an ``(H, W, C)`` array, as Pillow's ``exif_transpose`` does."""
    ops = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, k=1),
    }
    return np.ascontiguousarray(ops.get(int(orientation), ops[1])(arr))


def _read_16bit_planar_tiff(path: Path) -> np.ndarray:
    """OpenCV interleaves the planes of a 16-bit TIFF stored plane by plane wrongly; tifffile does not."""
    try:
        import tifffile
    except ImportError:
        raise ImageReadError(path, "a 16-bit TIFF stored plane by plane (PlanarConfiguration 2) is read with "
                                   "tifffile: pip install 'fcnseg[large]', or re-save it interleaved") from None
    with tifffile.TiffFile(path) as tf:
        arr = tf.pages[0].asarray()  # (S, H, W)
    return np.moveaxis(arr, 0, 2) if arr.ndim == 3 else arr[:, :, None]


def _read_16bit(path: Path, img: Image.Image) -> np.ndarray:
    cv2 = require("cv2", "reading 16-bit images")  # imported lazily: only 16-bit files need it

    if img.format == "TIFF" and img.tag_v2.get(284, 1) == 2 and img.tag_v2.get(277, 1) > 1:
        arr = _read_16bit_planar_tiff(path)
        return apply_orientation(arr, img.getexif().get(_EXIF_ORIENTATION, 1))
    buf = np.fromfile(path, dtype=np.uint8)  # fromfile + imdecode also works for non-ASCII paths on Windows
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is None:
        if img.width * img.height > _OPENCV_DEFAULT_MAX_PIXELS:
            raise ImageReadError(
                path, f"OpenCV, which decodes 16-bit images, refuses {img.width}x{img.height} pixels unless the "
                "environment variable OPENCV_IO_MAX_IMAGE_PIXELS is set above that before the run starts")
        raise ImageReadError(path, "OpenCV cannot decode this 16-bit image; re-export it as a 16-bit PNG")
    if arr.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(
            path, f"unsupported sample type {arr.dtype}; store images as 8- or 16-bit unsigned integers"
        )
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 3:
        arr = arr[:, :, ::-1]  # BGR -> RGB
    elif arr.shape[2] == 4:
        arr = arr[:, :, [2, 1, 0, 3]]  # BGRA -> RGBA
    orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    return apply_orientation(arr, orientation)


def _pil_to_array(path: Path, img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("1", "LA"):
        img = img.convert("L")  # 2-channel gray+alpha: the alpha is dropped, as for RGBA -> RGB
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"):
        img = img.convert("RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode == "I":
        arr = np.array(img)
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageReadError(path, "32-bit integer samples outside 0..65535; rescale and save as 16-bit PNG")
        return arr.astype(np.uint16)[:, :, None]
    elif mode == "F":
        raise ImageReadError(path, "floating-point images are not supported; rescale to 0..65535 and save as 16-bit PNG/TIFF")
    arr = np.array(img)
    if img.mode in _MODES_16BIT:
        arr = arr.astype(np.uint16)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def read_image(path: str | os.PathLike, *,
               max_image_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image as ``(H, W, C)`` uint8/uint16 RGB(A) with its EXIF orientation applied.

    ``C`` is 1 (gray), 3 (RGB) or 4 (RGBA); palette images are expanded to their colours.
    Raises :class:`ImageReadError` (a ``ValueError``) for a missing, empty, truncated or non-image
    file, or one of more than ``max_image_pixels`` pixels (None: no limit), naming the file and the fix.
    """
    path = Path(path)
    _check_file(path)
    with _open_verified(path, max_image_pixels) as img:
        if _is_16bit(path, img):
            return _read_16bit(path, img)
        img = ImageOps.exif_transpose(img)
        return _pil_to_array(path, img)


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of the image :func:`read_image` returns, from the header alone (EXIF orientation
    counted: a rotated photo's sides are swapped)."""
    path = Path(path)
    _check_file(path)
    with _open_header(path) as img:
        w, h = img.size
        if img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
            w, h = h, w
    return h, w


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label mask as ``(H, W)`` uint8 class indices.

    Single-channel 8-bit PNGs are read as they are; palette PNGs (Pascal VOC style) give their
    palette *indices*, not their colours. Colour (RGB/RGBA) masks are refused: their colours are
    not class indices, and guessing a colour-to-class map silently would mislabel pixels.
    """
    path = Path(path)
    _check_file(path)
    with _open_verified(path) as img:
        img = ImageOps.exif_transpose(img)
        mode = img.mode
        if mode in ("P", "L"):
            arr = np.array(img)
        elif mode == "1":
            arr = np.array(img).astype(np.uint8)
        elif mode in _MODES_16BIT or mode == "I":
            arr = np.array(img)
            if arr.size and (arr.min() < 0 or arr.max() > 255):
                raise ImageReadError(
                    path, f"16-bit mask with labels up to {int(arr.max())}; fcnseg masks hold labels 0..255 "
                    "(255 = ignore): remap the labels and save the mask as an 8-bit single-channel PNG",
                )
            arr = arr.astype(np.uint8)
        else:
            raise ImageReadError(
                path, f"mask has mode {mode!r} ({len(img.getbands())} channels); masks must be single-channel "
                "PNGs of class indices or palette PNGs. Fix: map each colour to its class index and save with "
                "PIL.Image.fromarray(index_array.astype('uint8'), mode='L').save(path)",
            )
    return np.ascontiguousarray(arr, dtype=np.uint8)  # np.array copies: writable, unlike np.asarray(PIL image)


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """Convert ``(H, W, C)`` to ``channels`` channels, keeping the dtype.

    - alpha is dropped (RGBA -> RGB, before any other conversion);
    - RGB -> gray: ITU-R BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B``, rounded to nearest;
    - gray -> RGB: the gray value copied into the three channels;
    - to 4 channels (RGBA): an opaque alpha (the dtype's maximum) is appended.
    """
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W, C) image with C in 1, 3, 4; got shape {img.shape}")
    if channels not in (1, 3, 4):
        raise ValueError(f"channels must be 1 (gray), 3 (RGB) or 4 (RGBA); got {channels}")
    c = img.shape[2]
    if c == channels:
        return img
    if channels == 4:
        rgb = to_channels(img, 3)
        alpha = np.full(rgb.shape[:2] + (1,), np.iinfo(rgb.dtype).max if rgb.dtype.kind in "ui" else 1.0, rgb.dtype)
        return np.concatenate([rgb, alpha], axis=2)
    if c == 4:
        img = img[:, :, :3]
        c = 3
        if channels == 3:
            return np.ascontiguousarray(img)
    if channels == 3:  # c == 1
        return np.repeat(img, 3, axis=2)
    # channels == 1, c == 3
    y = img.astype(np.float64) @ np.asarray(LUMA_601)  # (H, W)
    if img.dtype.kind in "ui":
        y = np.clip(np.rint(y), 0, np.iinfo(img.dtype).max)
    return y.astype(img.dtype)[:, :, None]


def to_float(img: np.ndarray) -> np.ndarray:
    """``uint8`` / 255 or ``uint16`` / 65535 as ``float32`` in [0, 1]; ``float32`` is assumed already in [0, 1]."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / np.float32(255)
    if img.dtype == np.uint16:
        return img.astype(np.float32) / np.float32(65535)
    if img.dtype == np.float32:
        return img
    if img.dtype == np.float64:
        return img.astype(np.float32)
    raise ValueError(f"unsupported image dtype {img.dtype}; expected uint8, uint16 or float32 in [0, 1]")


def normalize(img01: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(H, W, C)`` float in [0, 1] -> ``(C, H, W)`` float32 tensor ``(x - mean) / std`` per channel."""
    if img01.ndim == 2:
        img01 = img01[:, :, None]
    c = img01.shape[2]
    if len(mean) != c or len(std) != c:
        raise ValueError(
            f"image has {c} channels but mean has {len(mean)} and std {len(std)} values; "
            "give one mean/std per channel (or convert the image with to_channels first)"
        )
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive; got {list(std)}")
    x = torch.from_numpy(np.ascontiguousarray(img01, dtype=np.float32)).permute(2, 0, 1)  # (C, H, W)
    m = torch.tensor(mean, dtype=torch.float32).view(c, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(c, 1, 1)
    return ((x - m) / s).contiguous()


def prepare_image(img: np.ndarray, in_channels: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The full input pipeline of a decoded image: channels, scaling to [0, 1], normalisation -> ``(C, H, W)``."""
    return normalize(to_float(to_channels(img, in_channels)), mean, std)
