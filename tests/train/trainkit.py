"""Helpers of the training tests: a tiny scene dataset in the folder layout and the real
config composed with Hydra.

The dataset: gray canvases with bright squares (class 1) and dark discs (class 2) on a mid-gray
background (class 0), plus a band of ignore (255) pixels: small enough for CPU steps,
structured enough that a patch net learns it.
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


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
    from hydra import compose as hcompose, initialize_config_dir
    tool = load_tool()
    tool.register_zoo_models()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hcompose("train", overrides=overrides)
    return tool.to_plain(cfg)


def tiny_overrides(scenes, *extra, zoo=True):
    width = ["model.kwargs.width_mult=0.25"] if zoo else []
    return ["data=folder", f"data.root={scenes}", *width, "trainer.device=cpu", "trainer.epochs=1", "trainer.batch_size=3",
            "trainer.val_batch_size=2", "trainer.grid_images=2", *extra]
