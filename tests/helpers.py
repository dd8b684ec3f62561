"""Helpers shared by the tests: small on-disk datasets, tiny checkpoints, test images and
the real configs composed with Hydra. Fixtures stay in the conftest.py files; test
modules import what they need from here (``from helpers import ...``, tests/ is on
pytest's pythonpath), never from another test module.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

import fcnseg.zoo
from fcnseg.checkpoint import save_checkpoint
from fcnseg.data.palette import default_palette
from fcnseg.ops import crop_to_smallest

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------- datasets in the on-disk layouts
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


# ------------------------------------------------------- the training scenes and config
# Gray canvases with bright squares (class 1) and dark discs (class 2) on a mid-gray
# background (class 0), plus a band of ignore (255) pixels: small enough for CPU steps,
# structured enough that a patch net learns it.

def make_scenes(root, n_train=6, n_val=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.full((size, size), 128, np.float64)
            mask = np.zeros((size, size), np.uint8)
            r, c = rng.integers(2, size // 2 - 2, 2)
            s = rng.integers(5, 9)
            img[r:r + s, c:c + s] = 220
            mask[r:r + s, c:c + s] = 1
            cy, cx = rng.integers(size // 2, size - 4, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(9, 16)
            img[disc] = 40
            mask[disc] = 2
            mask[0, :] = 255  # an ignored row, as real datasets have void borders
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / split / "images" / f"s{i:02d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"s{i:02d}.png")
    (root / "classes.json").write_text(json.dumps(
        {"names": ["background", "square", "disc"], "mean": [0.5], "std": [0.25]}))
    return root


def load_tool():
    """tools/train.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("fcnseg_tool_train", ROOT / "tools" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compose(overrides):
    """The real conf/train.yaml composed with overrides, as plain dicts for fcnseg.train.run."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    tool = load_tool()
    tool.register_zoo_models()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hcompose("train", overrides=overrides)
    return tool.to_plain(cfg)


def tiny_overrides(scenes, *extra, zoo=True):
    width = ["model.kwargs.width_mult=0.25"] if zoo else []
    return ["data=folder", f"data.root={scenes}", *width, "trainer.device=cpu", "trainer.epochs=1",
            "trainer.batch_size=3",
            "trainer.val_batch_size=2", "trainer.grid_images=2", *extra]


# ------------------------------------------------- inference checkpoints and images

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
    """A checkpoint in the training format (fcnseg.checkpoint) around the toy net."""
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


def make_image_tree(root: Path) -> Path:
    """root with every supported format, depth and channel count, two subfolders, and
    four bad files (broken, truncated, empty, not an image): GOOD and BAD below."""
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


# ----------------------------------------------------- conversion: networks and the exactness check
K = 7  # a class count no default (2, 10, 1000) can match


def f64(m):
    return m.double().eval()


def lecture_net(c=3, k=K):
    # the worked example of the lecture notes: 15x15 patch -> 1x1
    return torch.nn.Sequential(torch.nn.Conv2d(c, 4, 2), torch.nn.MaxPool2d(2, 2), torch.nn.Conv2d(4, 5, 2),
                               torch.nn.MaxPool2d(3, 3), torch.nn.Conv2d(5, k, 2))


def alexnet_like(k=K):
    # strided 11x11 conv, LRN, overlapping 3x3/2 max pooling, grouped conv, FC head with dropout
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 8, 11, stride=4), nn.ReLU(inplace=True), nn.LocalResponseNorm(5),
                         nn.MaxPool2d(3, 2), nn.Conv2d(8, 12, 5, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                         nn.Flatten(), nn.Dropout(), nn.Linear(12 * 2 * 2, 16), nn.ReLU(), nn.Linear(16, k))


class ResidualConcat(torch.nn.Module):
    """A forward() with functional calls, a residual addition, a concatenation and view-flatten."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(3, 6, 3)
        self.a = nn.Conv2d(6, 6, 1)
        self.b = nn.Conv2d(6, 4, 1)
        self.head = nn.Linear(10 * 3 * 3, 12)
        self.fc = nn.Linear(12, K)
        self.bn1d = nn.BatchNorm1d(12)

    def forward(self, x):
        F = torch.nn.functional
        x = F.relu(self.stem(x))
        x = F.max_pool2d(x, 2)
        x = x + torch.sigmoid(self.a(x))
        x = torch.cat([x, F.elu(self.b(x))], dim=1)
        x = F.avg_pool2d(x, 2)
        x = x.view(x.size(0), -1)
        x = self.bn1d(F.leaky_relu(self.head(x), 0.1))
        return F.log_softmax(self.fc(x), dim=1)


def check_dense(model, x, patch_size=None, *, output_stride=1, pad_mode="constant", pad_value=0.0, tol=1e-9,
                pixels=None):
    """Both forms of the dense network (densify's optimised default and optimize=False) == patchwise
    at every grid pixel (or the given pixels); returns the largest relative error."""
    import fcnseg
    worst = 0.0
    for optimize in (True, False):
        dense = fcnseg.densify(model, patch_size, output_stride=output_stride, pad_mode=pad_mode,
                               pad_value=pad_value, optimize=optimize)
        n, _, h, w = x.shape
        s = output_stride
        with torch.no_grad():
            out = dense(x)
        for t in torch.utils._pytree.tree_leaves(out):
            assert t.shape[-2:] == (-(-h // s), -(-w // s)) and t.is_contiguous()
        result = fcnseg.compare_dense(dense, model, x, pixels, batch_size=512)
        assert result.pixels > 0
        assert result.ok(tol), (f"dense (optimize={optimize}) differs from patch-by-patch: relative error "
                                f"{result.max_rel:.3g} > {tol:g}")
        worst = max(worst, result.max_rel)
    return worst


# ---- Caffe-ported cascade stages (MTCNN-like) -----------------------------------------------
# Caffe-ported cascade face-classifier stages (MTCNN-like): ceil-mode pooling with partial last
# windows, a flatten in (N, W, H, C) order, several heads. Random weights; the layer sizes of the
# public ports.

class RNet(nn.Module):
    """24x24 stage: conv-PReLU-maxpool3/2(ceil) x2, conv2x2, NHWC-style flatten, FC, two heads."""
    patch_size = (24, 24)

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)             # 22 -> 11: partial last window
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)             # 9 -> 4
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.softmax5_1 = nn.Linear(128, 2), nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.softmax5_1(self.dense5_1(x)), self.dense5_2(x)


class ONet(nn.Module):
    """48x48 stage: three ceil-mode pools, NHWC-style flatten, FC with dropout, three heads."""
    patch_size = (48, 48)

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)             # 46 -> 23: partial last window
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)             # 21 -> 10
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)             # 8 -> 4
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.dropout5, self.prelu5 = nn.Linear(1152, 256), nn.Dropout(0.25), nn.PReLU(256)
        self.dense6_1, self.softmax6_1 = nn.Linear(256, 2), nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dropout5(self.dense5(x.view(x.shape[0], -1))))
        return self.softmax6_1(self.dense6_1(x)), self.dense6_2(x), self.dense6_3(x)


class Head(nn.Module):
    """One output of a several-output classifier, as a one-output classifier (the reference)."""

    def __init__(self, model, key):
        super().__init__()
        self.model, self.key = model, key
        self.patch_size = getattr(model, "patch_size", None)

    def forward(self, x):
        return self.model(x)[self.key]


def grads_match(model, x, patch_size, output_stride=1, key=None, tol=1e-9):
    """The gradient of a random weighting of the dense scores (parameters and image) equals the one
    computed patch by patch on the output grid. Returns the largest relative difference."""
    import fcnseg
    s = output_stride
    dense = fcnseg.densify(model, patch_size, output_stride=s)
    x = x.clone().requires_grad_(True)
    out = dense(x)
    out = out if key is None else out[key]
    weights = torch.randn_like(out)
    model.zero_grad()
    (out * weights).sum().backward()
    got = [p.grad.clone() for p in model.parameters() if p.grad is not None] + [x.grad.clone()]
    x.grad = None
    model.zero_grad()
    n, _, h, w = x.shape
    grid = torch.zeros(h, w, dtype=torch.bool)
    grid[::s, ::s] = True
    idx = grid.nonzero()
    ref_model = model if key is None else Head(model, key)
    crops = fcnseg.crop_patches(x, idx, patch_size)                    # (N*M, C, P, Q), image-major
    scores = ref_model(crops).reshape(n, len(idx), -1)
    ref_w = weights[:, :, idx[:, 0] // s, idx[:, 1] // s].transpose(1, 2)
    (scores * ref_w).sum().backward()
    want = [p.grad.clone() for p in model.parameters() if p.grad is not None] + [x.grad.clone()]
    assert len(got) == len(want)
    worst = 0.0
    for a, b in zip(got, want):
        err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
        worst = max(worst, err)
    assert worst <= tol, f"dense gradient differs from patch-by-patch: {worst:.3g}"
    return worst


class SqueezeExciteDepthwise(nn.Module):
    """A depthwise convolution in a residual block, then a squeeze-excitation gate (patch-global:
    the layers after it run per patch, the dense network's per-patch tail) and two heads."""
    patch_size = (14, 14)

    def __init__(self, c=3, k=K):
        super().__init__()
        self.stem = nn.Conv2d(c, 8, 3)                                  # 14 -> 12
        self.depthwise = nn.Conv2d(8, 8, 3, groups=8)                  # 12 -> 10, valid
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)                                     # 10 -> 5
        self.squeeze, self.excite = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.cls, self.aux = nn.Conv2d(8, k, 5), nn.Linear(8 * 5 * 5, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        branch = torch.relu(self.bn(self.depthwise(x)))
        x = self.pool(crop_to_smallest(x, branch) + branch)             # residual, cropped to the branch
        gate = torch.sigmoid(self.excite(torch.relu(self.squeeze(x.mean((2, 3), keepdim=True)))))
        x = x * gate
        return self.cls(x).flatten(1), self.aux(x.flatten(1))
