"""The plain folder layout, for your own data.

    root/
      classes.json                  optional: {"names": [...], "palette": [[r, g, b], ...],
                                               "mean": [...], "std": [...], "in_channels": C,
                                               "ignore_index": 255}
      train/images/<stem>.<png|jpg|jpeg|bmp|tif|tiff|webp>
      train/masks/<stem>.png        single-channel PNG of class indices (or palette PNG), 255 = ignore
      val/...

Every value not given as an argument comes from classes.json, then from the data: the class
count from the largest label in the masks of every split (with a ``scan_cache``,
:class:`fcnseg.data.scan.ScanCache`, only the masks it does not know are read), the channel
count from the first image (RGBA counts as RGB), the normalisation from
:func:`fcnseg.data.base.default_mean_std`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .base import Sample, SegmentationDataset, check_masks_exist, require_dir
from .errors import DatasetError
from .io import IMAGE_EXTENSIONS, read_image, read_mask
from .scan import ScanCache, scan

CLASSES_FILE = "classes.json"
_KNOWN_KEYS = {"names", "palette", "mean", "std", "in_channels", "ignore_index", "num_classes"}


def read_classes_json(root: Path) -> dict[str, Any]:
    path = root / CLASSES_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e}); fix the syntax or delete the file") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: must hold a JSON object such as {{\"names\": [...]}}")
    unknown = set(meta) - _KNOWN_KEYS
    if unknown:
        raise DatasetError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(_KNOWN_KEYS)}")
    return meta


def list_images(directory: Path) -> list[Path]:
    """Image files of a directory (hidden files and other extensions skipped), sorted by name."""
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def infer_num_classes(root: Path, ignore_index: int = 255, cache: ScanCache | None = None) -> int:
    """Largest label in the masks of every split under ``root``, plus one (reads every mask
    once; with a scan cache, only the masks it does not know)."""
    paths = sorted(root.glob("*/masks/*.png"))
    labels, problems = scan([(p,) for p in paths], lambda j: np.unique(read_mask(paths[j])).tolist(),
                            settings="mask labels", cache=cache, desc=f"scan {root} (class count)")
    if problems:
        raise DatasetError("\n".join(problems[:20]) + (f"\n... and {len(problems) - 20} more"
                                                      if len(problems) > 20 else ""))
    top = max((v for found in labels for v in found if v != ignore_index), default=-1)
    if top < 0:
        raise DatasetError(f"{root}: cannot infer the class count, no labelled mask pixels under */masks/; "
                           f"pass num_classes or write {root / CLASSES_FILE} with the class names")
    return top + 1


class FolderDataset(SegmentationDataset):
    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        num_classes: int | None = None,
        in_channels: int | None = None,
        transform: Callable[..., Any] | None = None,
        class_names: Sequence[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        ignore_index: int | None = None,
        scan_cache: ScanCache | None = None,
    ):
        root = Path(root).expanduser()
        require_dir(root, "dataset root", "point root at the folder that holds train/ and val/")
        split_dir = root / split
        if not split_dir.is_dir():
            have = sorted(p.name for p in root.iterdir() if (p / "images").is_dir())
            raise DatasetError(f"{split_dir}: split {split!r} not found (splits present: {have or 'none'}). "
                               f"Fix: create {split_dir}/images and {split_dir}/masks, or pick one of {have}")
        img_dir = require_dir(split_dir / "images", "image folder",
                              f"put the images in {split_dir / 'images'} and the masks in {split_dir / 'masks'}")
        mask_dir = require_dir(split_dir / "masks", "mask folder",
                               f"put one single-channel PNG per image, with the same file stem, in {split_dir / 'masks'}")

        images = list_images(img_dir)
        if not images:
            others = sorted({p.suffix.lower() or p.name for p in img_dir.iterdir() if not p.name.startswith(".")})
            raise DatasetError(
                f"{img_dir}: the split is empty, no image files (found: {others or 'nothing'}). "
                f"Fix: add images with one of the extensions {', '.join(IMAGE_EXTENSIONS)}"
            )
        stems: dict[str, Path] = {}
        for p in images:
            if p.stem in stems:
                raise DatasetError(f"{p} and {stems[p.stem]} share the stem {p.stem!r}, so both would use the "
                                   f"mask {mask_dir / (p.stem + '.png')}; rename or remove one of them")
            stems[p.stem] = p
        samples = [Sample(p, mask_dir / f"{p.stem}.png", p.stem) for p in images]
        check_masks_exist(samples, f"add the missing masks to {mask_dir} (named <image stem>.png), "
                                   f"or move those images out of {img_dir}")

        meta = read_classes_json(root)
        names = class_names if class_names is not None else meta.get("names")
        ignore = int(ignore_index if ignore_index is not None else meta.get("ignore_index", 255))
        k = num_classes if num_classes is not None else meta.get("num_classes")
        if k is None:
            k = len(names) if names is not None else infer_num_classes(root, ignore, scan_cache)
        if names is not None and len(names) != k:
            source = "class_names" if class_names is not None else str(root / CLASSES_FILE)
            raise DatasetError(f"{source} lists {len(names)} class names but num_classes is {k}; "
                               "make them agree (one name per class, background included)")
        if in_channels is None:
            in_channels = meta.get("in_channels")
        if in_channels is None:
            c = read_image(samples[0].image).shape[2]
            in_channels = 3 if c == 4 else c  # alpha is not a colour: RGBA data trains as RGB by default
        super().__init__(
            samples,
            num_classes=int(k),
            class_names=names,
            palette=palette if palette is not None else meta.get("palette"),
            in_channels=int(in_channels),
            mean=mean if mean is not None else meta.get("mean"),
            std=std if std is not None else meta.get("std"),
            transform=transform,
            ignore_index=ignore,
            source=str(split_dir),
        )
