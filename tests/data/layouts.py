"""Helpers that write small datasets in the real on-disk layouts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fcnseg.data.palette import default_palette


def save_gray(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8), mode="L").save(path)
    return path


def save_rgb(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8), mode="RGB").save(path)
    return path


def save_palette_mask(path: Path, labels: np.ndarray) -> Path:
    """A VOC-style palette PNG whose indices are ``labels``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(labels, np.uint8), mode="P")
    pal = default_palette(256)
    pal[255] = [224, 224, 192]  # VOC's border colour
    img.putpalette([v for c in pal for v in c])
    img.save(path)
    return path


def make_folder_tree(root: Path, split: str = "train", n: int = 3, h: int = 12, w: int = 10,
                     num_classes: int = 4, channels: int = 3, seed: int = 0) -> list[np.ndarray]:
    """``root/split/images/s{i}.png`` + ``masks/s{i}.png``; returns the masks written."""
    rng = np.random.default_rng(seed)
    masks = []
    for i in range(n):
        img = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        if channels == 1:
            save_gray(root / split / "images" / f"s{i}.png", img[:, :, 0])
        else:
            save_rgb(root / split / "images" / f"s{i}.png", img)
        m = rng.integers(0, num_classes, (h, w), dtype=np.uint8)
        m[0, 0] = 255
        save_gray(root / split / "masks" / f"s{i}.png", m)
        masks.append(m)
    return masks
