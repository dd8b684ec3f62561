"""Plain-dict settings -> training objects (optimiser, schedule, augmentation); the model
comes from fcnseg.models.

The dicts are what tools/train.py gets from its Hydra config (OmegaConf.to_container);
the library reads no config files. Every choice is an explicit name checked here.
"""
import math

import torch


def build_optimizer(cfg, params):
    cfg = dict(cfg)
    name = cfg.pop("name")
    if name == "sgd":
        return torch.optim.SGD(params, **cfg)
    if name == "adamw":
        if "betas" in cfg:
            cfg["betas"] = tuple(cfg["betas"])
        return torch.optim.AdamW(params, **cfg)
    raise ValueError(f"unknown optimiser {name!r}; use optim=sgd or optim=adamw")


def lr_factor(cfg, step, total_steps, steps_per_epoch):
    """Multiplier of the base learning rate after `step` optimiser steps."""
    warmup = cfg.get("warmup_steps", 0)
    if step < warmup:
        return (step + 1) / warmup
    name = cfg["name"]
    t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if name == "poly":
        return (1.0 - t) ** cfg.get("power", 0.9)
    if name == "cosine":
        lo = cfg.get("min_lr_ratio", 0.0)
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))
    if name == "step":
        return cfg.get("gamma", 0.1) ** (step // (cfg["step_epochs"] * steps_per_epoch))
    if name == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {name!r}; use sched=poly|cosine|step|constant")


def build_scheduler(cfg, optimizer, total_steps, steps_per_epoch):
    lr_factor(cfg, 0, total_steps, steps_per_epoch)  # fail now on a bad name, not mid-run
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(cfg, s, total_steps, steps_per_epoch))


def build_transform(aug_cfg):
    """{"transforms": [{"name": "HorizontalFlip", "p": 0.5}, ...]} -> albumentations.Compose
    applied jointly to the uint8 image and its mask (None when the list is empty)."""
    import albumentations as A
    items = (aug_cfg or {}).get("transforms") or []
    ts = []
    for item in items:
        item = dict(item)
        name = item.pop("name")
        cls = getattr(A, name, None)
        if cls is None or not isinstance(cls, type):
            raise ValueError(f"aug: albumentations has no transform {name!r}")
        ts.append(cls(**item))
    return A.Compose(ts) if ts else None
