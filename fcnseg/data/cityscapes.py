"""Cityscapes fine annotations: ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` with
``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png``; the 34 label ids are mapped to the 19
evaluation classes ("train ids") of the official benchmark, everything else to 255 (ignore)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .base import IMAGENET_MEAN, IMAGENET_STD, Sample, SegmentationDataset, check_masks_exist, require_dir

# (label id, name, colour) of the 19 evaluated classes, in train-id order, from cityscapesScripts' labels.py.
CITYSCAPES_CLASSES = (
    (7, "road", (128, 64, 128)), (8, "sidewalk", (244, 35, 232)), (11, "building", (70, 70, 70)),
    (12, "wall", (102, 102, 156)), (13, "fence", (190, 153, 153)), (17, "pole", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)), (20, "traffic sign", (220, 220, 0)),
    (21, "vegetation", (107, 142, 35)), (22, "terrain", (152, 251, 152)), (23, "sky", (70, 130, 180)),
    (24, "person", (220, 20, 60)), (25, "rider", (255, 0, 0)), (26, "car", (0, 0, 142)),
    (27, "truck", (0, 0, 70)), (28, "bus", (0, 60, 100)), (31, "train", (0, 80, 100)),
    (32, "motorcycle", (0, 0, 230)), (33, "bicycle", (119, 11, 32)),
)


def cityscapes_label_map(ignore_index: int = 255) -> np.ndarray:
    """``(256,)`` uint8 lookup table: label id -> train id, unlisted ids -> ``ignore_index``."""
    lut = np.full(256, ignore_index, np.uint8)
    for train_id, (label_id, _, _) in enumerate(CITYSCAPES_CLASSES):
        lut[label_id] = train_id
    return lut


class CityscapesDataset(SegmentationDataset):
    def __init__(self, root: str | os.PathLike, split: str, transform: Callable[..., Any] | None = None):
        root = Path(root).expanduser()
        img_root = require_dir(root / "leftImg8bit" / split, f"image folder of split {split!r}",
                               "point root at the folder holding leftImg8bit/ and gtFine/ (split: train, val or test)")
        gt_root = require_dir(root / "gtFine" / split, f"annotation folder of split {split!r}",
                              "extract gtFine_trainvaltest.zip next to leftImg8bit/")
        samples = []
        for img in sorted(img_root.glob("*/*_leftImg8bit.png")):
            stem = img.name[: -len("_leftImg8bit.png")]
            samples.append(Sample(img, gt_root / img.parent.name / f"{stem}_gtFine_labelIds.png", stem))
        check_masks_exist(samples, "extract gtFine_trainvaltest.zip (the *_gtFine_labelIds.png files) into root/gtFine")
        super().__init__(samples, num_classes=len(CITYSCAPES_CLASSES),
                         class_names=[n for _, n, _ in CITYSCAPES_CLASSES],
                         palette=[list(c) for _, _, c in CITYSCAPES_CLASSES], in_channels=3,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD, transform=transform,
                         label_map=cityscapes_label_map(), source=str(img_root))
