"""Augmentation settings -> the albumentations pipeline a dataset applies to each sample.

The settings are a list of albumentations transforms by class name with their keyword
arguments (conf/aug/*.yaml); the pipeline runs jointly on the decoded uint8/uint16 image
and its mask, before the dataset scales and normalises them (see SegmentationDataset).
"""
from __future__ import annotations

from fcnseg.extras import require


def build_transform(aug_cfg):
    """{"transforms": [{"name": "HorizontalFlip", "p": 0.5}, ...]} -> albumentations.Compose
    applied jointly to the uint8 image and its mask (None when the list is empty: aug=none then
    needs no albumentations)."""
    items = (aug_cfg or {}).get("transforms") or []
    if not items:
        return None
    A = require("albumentations", "augmentation (aug=...)")
    transforms = []
    for item in items:
        item = dict(item)
        name = item.pop("name")
        cls = getattr(A, name, None)
        if cls is None or not isinstance(cls, type):
            raise ValueError(f"aug: albumentations has no transform {name!r}")
        transforms.append(cls(**item))
    return A.Compose(transforms) if transforms else None
