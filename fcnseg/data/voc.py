"""Pascal VOC 2012 segmentation: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNGs
whose indices are the labels; 255 marks object borders and "difficult" regions, kept as ignore),
``ImageSets/Segmentation/<split>.txt`` (one id per line)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from fcnseg.data.palette import default_palette

from .base import IMAGENET_MEAN, IMAGENET_STD, Sample, SegmentationDataset, check_masks_exist
from .errors import DatasetError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def find_voc_root(root: Path) -> Path:
    """Accept ``.../VOC2012`` itself or any parent up to the folder that holds ``VOCdevkit``."""
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise DatasetError(f"{root}: no JPEGImages folder here nor in VOC2012/ or VOCdevkit/VOC2012/. Fix: point "
                       "root at VOCdevkit/VOC2012 (the folder holding JPEGImages, SegmentationClass, ImageSets)")


class VOCDataset(SegmentationDataset):
    def __init__(self, root: str | os.PathLike, split: str, transform: Callable[..., Any] | None = None):
        base = find_voc_root(Path(root).expanduser())
        list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            have = sorted(p.stem for p in list_file.parent.glob("*.txt")) if list_file.parent.is_dir() else []
            raise DatasetError(f"{list_file}: split list not found (lists present: {have or 'none'}); "
                               f"use one of {have or ['train', 'val', 'trainval']} or restore the file")
        ids = [ln.strip() for ln in list_file.read_text().splitlines() if ln.strip()]
        if not ids:
            raise DatasetError(f"{list_file}: the split is empty; the file must list one image id per line")
        samples = [Sample(base / "JPEGImages" / f"{i}.jpg", base / "SegmentationClass" / f"{i}.png", i) for i in ids]
        missing_img = [s.image for s in samples if not s.image.is_file()]
        if missing_img:
            raise DatasetError(f"{missing_img[0]}: image listed in {list_file} not found ({len(missing_img)} "
                               "missing in all); re-extract the VOC archive or remove those ids from the list")
        check_masks_exist(samples, f"re-extract SegmentationClass from the VOC archive, or remove those ids from {list_file}")
        super().__init__(samples, num_classes=len(VOC_CLASSES), class_names=VOC_CLASSES,
                         palette=default_palette(len(VOC_CLASSES)), in_channels=3,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD, transform=transform, source=str(list_file))
