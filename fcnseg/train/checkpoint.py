"""Checkpoints: one torch file, written atomically, loadable with weights_only=True.

A checkpoint holds everything needed to rebuild and use the model without the training
config (recipe, weights, patch geometry, padding, normalisation, class names and
palette) and everything needed to resume the run (optimiser, schedule, grad scaler,
epoch/step, RNG states). The format is documented in docs/training.md.
"""
import os
import random
from pathlib import Path

import numpy as np
import torch

FORMAT = "fcnseg-checkpoint"
VERSION = 1


def save_checkpoint(path, **state):
    """Write to a temporary file in the same directory, then rename over `path`, so a
    crash or a kill mid-write never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path, map_location="cpu"):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train one with "
                                f"tools/train.py (it writes last.pt and best.pt in the run dir)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, foreign or non-weights pickle
        raise ValueError(f"{path} is not a readable fcnseg checkpoint ({e}); "
                         f"use a last.pt/best.pt written by tools/train.py") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not an fcnseg checkpoint (no format={FORMAT!r} key)")
    return ckpt


INFO_KEYS = ("patch_size", "pad_mode", "pad_value", "in_channels", "num_classes",
             "class_names", "palette", "mean", "std", "ignore_index", "epoch", "metrics",
             "mode", "model")


def model_from_checkpoint(ckpt):
    """ckpt (dict or path) -> (classifier in eval mode with the trained weights, info).

    info["patch_size"] is (P, Q) for a patch classifier (densify it with
    info["pad_mode"] / info["pad_value"]) or None for an already dense network (smp)."""
    from fcnseg.train.build import build_model
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    model = build_model(ckpt["model"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    info = {k: ckpt.get(k) for k in INFO_KEYS}
    if info["patch_size"] is not None:
        info["patch_size"] = tuple(info["patch_size"])
    return model, info


def rng_state():
    """All RNG states as tensors and plain lists (weights_only-loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
