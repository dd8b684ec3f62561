"""ADE20K scene parsing (the ADEChallengeData2016 release, 150 classes):
``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png``.
Stored label 0 means "other/unlabelled" and becomes 255 (ignore); label k becomes class k - 1."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fcnseg.data.palette import default_palette

from .base import IMAGENET_MEAN, IMAGENET_STD, Sample, SegmentationDataset, check_masks_exist, require_dir
from .errors import DatasetError

# objectInfo150 names, in label order (label k + 1 in the files).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)
_SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


def ade20k_label_map(ignore_index: int = 255) -> np.ndarray:
    """``(256,)`` uint8 lookup table: 0 -> ignore, k -> k - 1 (labels above 150 stay out of range and are reported)."""
    lut = np.arange(256, dtype=np.int64) - 1  # stored 1..255 -> 0..254: only stored 0 can land on 255
    lut[0] = ignore_index
    return lut.astype(np.uint8)


def find_ade20k_root(root: Path) -> Path:
    for cand in (root, root / "ADEChallengeData2016"):
        if (cand / "images").is_dir() and (cand / "annotations").is_dir():
            return cand
    raise DatasetError(f"{root}: no images/ and annotations/ here nor in ADEChallengeData2016/. Fix: point root "
                       "at ADEChallengeData2016 (from ADEChallengeData2016.zip) or its parent")


class ADE20KDataset(SegmentationDataset):
    def __init__(self, root: str | os.PathLike, split: str, transform: Callable[..., Any] | None = None):
        base = find_ade20k_root(Path(root).expanduser())
        if split not in _SPLITS:
            raise DatasetError(f"{base}: unknown ADE20K split {split!r}; use 'train' (training) or 'val' (validation)")
        sub = _SPLITS[split]
        img_dir = require_dir(base / "images" / sub, "image folder", "re-extract ADEChallengeData2016.zip")
        ann_dir = require_dir(base / "annotations" / sub, "annotation folder", "re-extract ADEChallengeData2016.zip")
        samples = [Sample(p, ann_dir / f"{p.stem}.png", p.stem) for p in sorted(img_dir.glob("*.jpg"))]
        check_masks_exist(samples, f"re-extract the annotations into {ann_dir} or remove those images")
        super().__init__(samples, num_classes=len(ADE20K_CLASSES), class_names=ADE20K_CLASSES,
                         palette=default_palette(len(ADE20K_CLASSES)), in_channels=3,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD, transform=transform,
                         label_map=ade20k_label_map(), source=str(img_dir))
