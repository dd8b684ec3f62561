"""Checkpoints and image folders for the inference tests (tiny networks, tiny images)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg.zoo
from fcnseg.train.checkpoint import save_checkpoint

PALETTE = [[10, 20, 30], [200, 0, 0], [0, 180, 0], [0, 0, 250], [90, 90, 90]]


def toy_model(num_classes=5, in_channels=3, seed=0):
    """The lecture's worked example (15x15 patch, total stride 6) at half width, with
    biases spread so that every class wins somewhere."""
    torch.manual_seed(seed)
    m = fcnseg.zoo.create("toy", num_classes=num_classes, in_channels=in_channels, width_mult=0.5)
    with torch.no_grad():
        last = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)][-1]
        last.weight.mul_(4.0)
        last.bias.zero_()
        P, Q = m.patch_size
        mean_score = m(torch.randn(256, in_channels, P, Q)).flatten(1).mean(0)  # (K,)
        last.bias.copy_(-mean_score)
    return m.eval()


def write_checkpoint(path: Path, *, num_classes=5, in_channels=3, pad_mode="reflect",
                     pad_value=0.0, seed=0) -> Path:
    """A checkpoint in the training format (fcnseg.train.checkpoint) around the toy net."""
    m = toy_model(num_classes, in_channels, seed)
    mean = [0.5, 0.4, 0.3][:in_channels] if in_channels <= 3 else [0.5] * in_channels
    std = [0.25, 0.2, 0.3][:in_channels] if in_channels <= 3 else [0.25] * in_channels
    return save_checkpoint(
        path, model={"builder": "zoo", "name": "toy",
                     "kwargs": {"num_classes": num_classes, "in_channels": in_channels,
                                "width_mult": 0.5}},
        state_dict=m.state_dict(), patch_size=list(m.patch_size), pad_mode=pad_mode,
        pad_value=pad_value, in_channels=in_channels, num_classes=num_classes,
        class_names=[f"class{k}" for k in range(num_classes)], palette=PALETTE[:num_classes],
        mean=mean, std=std, ignore_index=255, mode="dense", output_stride=1)


@pytest.fixture
def ckpt(tmp_path):
    return write_checkpoint(tmp_path / "toy.pt")


def random_image(h, w, c=3, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    hi = np.iinfo(dtype).max
    # smooth-ish content so labels form regions, plus noise so no two pixels tie
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(yy / 5.0)[..., None] * np.cos(xx / 7.0)[..., None] + 1) / 2
    img = 0.7 * base + 0.3 * rng.random((h, w, c))
    return (img * hi).astype(dtype)


def save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.squeeze() if arr.shape[-1] == 1 else arr).save(path, **kw)
    return path


@pytest.fixture
def image_tree(tmp_path):
    """in/ with every supported format, depth and channel count, two subfolders, and
    four bad files (broken, truncated, empty, not an image)."""
    root = tmp_path / "in"
    save(root / "rgb.png", random_image(23, 31, 3, seed=1))
    save(root / "a" / "gray16.png", random_image(30, 20, 1, np.uint16, seed=2))
    save(root / "a" / "rgba.png", random_image(17, 40, 4, seed=3))
    save(root / "a" / "b" / "photo.jpg", random_image(25, 25, 3, seed=4), quality=95)
    save(root / "a" / "b" / "pic.bmp", random_image(19, 21, 3, seed=5))
    save(root / "tiles" / "t.tif", random_image(64, 48, 3, seed=6))
    save(root / "tiles" / "w.webp", random_image(20, 22, 3, seed=7), lossless=True)
    (root / "bad").mkdir()
    (root / "bad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    good = (root / "rgb.png").read_bytes()
    (root / "bad" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "bad" / "empty.jpg").write_bytes(b"")
    (root / "bad" / "text.png").write_text("not an image")
    (root / "notes.txt").write_text("ignored: not an image extension")
    return root


GOOD = ["a/b/photo.jpg", "a/b/pic.bmp", "a/gray16.png", "a/rgba.png", "rgb.png", "tiles/t.tif",
        "tiles/w.webp"]
BAD = ["bad/broken.png", "bad/empty.jpg", "bad/text.png", "bad/truncated.png"]
