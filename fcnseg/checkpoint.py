"""Models by recipe and checkpoints: what training writes and inference, export and
verification read, with no dependency on the training code.

    spec = model_spec({"builder": "zoo", "name": "patchnet"}, num_classes=3, in_channels=1)
    model = build_model(spec)                       # the zoo's or segmentation_models_pytorch's
    save_checkpoint("best.pt", model=spec, state_dict=model.state_dict(), ...)
    model, info = model_from_checkpoint("best.pt")  # eval mode, trained weights, preprocessing

A checkpoint is one torch file holding only tensors and plain containers (loaded with
weights_only=True: no pickled code runs), written atomically. It holds everything
needed to rebuild and use the model without the training config (recipe, weights,
patch geometry, padding, normalisation, class names and palette) and everything needed
to resume the run (optimiser, schedule, grad scaler, epoch/step, RNG states). The
format is documented in docs/training.md.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from fcnseg.extras import require
from fcnseg.runtime import atomic_path

FORMAT = "fcnseg-checkpoint"
VERSION = 1
BUILDERS = ("zoo", "smp")

# what model_from_checkpoint hands to its users besides the network
INFO_KEYS = ("patch_size", "pad_mode", "pad_value", "in_channels", "num_classes",
             "class_names", "palette", "mean", "std", "ignore_index", "epoch", "metrics",
             "method", "model")


def model_spec(model_cfg: dict, num_classes: int, in_channels: int) -> dict:
    """{builder, name, kwargs?} + the data's class and channel counts -> the recipe stored in
    checkpoints, {builder, name, kwargs}, from which build_model rebuilds the network."""
    builder, name = model_cfg["builder"], model_cfg["name"]
    kwargs = dict(model_cfg.get("kwargs") or {})
    if builder == "zoo":
        kwargs.update(num_classes=num_classes, in_channels=in_channels)
    elif builder == "smp":
        kwargs.update(classes=num_classes, in_channels=in_channels)
    else:
        raise ValueError(f"model builder must be one of {BUILDERS}, got {builder!r}")
    return {"builder": builder, "name": name, "kwargs": kwargs}


def build_model(spec: dict) -> nn.Module:
    """A recipe from model_spec -> a freshly initialised network."""
    if spec["builder"] == "zoo":
        import fcnseg.zoo
        import fcnseg.zoo.patchnets  # noqa: F401  registers the custom patch nets
        return fcnseg.zoo.create(spec["name"], **spec["kwargs"])
    if spec["builder"] == "smp":
        smp = require("segmentation_models_pytorch", f"model {spec['name']} (builder smp)")
        return smp.create_model(spec["name"], **spec["kwargs"])
    raise ValueError(f"model builder must be one of {BUILDERS}, got {spec['builder']!r}")


def save_checkpoint(path: str | os.PathLike, **state) -> Path:
    """Write ``state`` (tensors and plain containers only) as an fcnseg checkpoint. A crash
    or a kill mid-write leaves the previous file, never a truncated one."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """An fcnseg checkpoint as a dict, loaded with weights_only=True."""
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


def model_from_checkpoint(ckpt: dict | str | os.PathLike) -> tuple[nn.Module, dict]:
    """ckpt (dict or path) -> (classifier in eval mode with the trained weights, info).

    info["patch_size"] is (P, Q) for a patch classifier (densify it with
    info["pad_mode"] / info["pad_value"]) or None for an already dense network (smp)."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    model = build_model(ckpt["model"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    info = {k: ckpt.get(k) for k in INFO_KEYS}
    if info["patch_size"] is not None:
        info["patch_size"] = tuple(info["patch_size"])
    return model, info
