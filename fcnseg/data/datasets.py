"""Dataset entry points: the layouts by name (four of labelled images, one of labelled
patches), a builder by name, a full-scan validator and normalisation statistics."""
from __future__ import annotations

import hashlib
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .ade20k import ADE20KDataset
from .base import SegmentationDataset
from .cityscapes import CityscapesDataset
from .errors import DatasetError
from .folder import FolderDataset
from .io import read_image, to_channels, to_float
from .patches import PatchFolderDataset
from .scan import ScanCache, scan
from .voc import VOCDataset

__all__ = [
    "SegmentationDataset", "FolderDataset", "VOCDataset", "CityscapesDataset", "ADE20KDataset",
    "PatchFolderDataset", "DATASETS", "dataset_class", "build_dataset", "validate_dataset", "DatasetReport",
    "compute_mean_std", "ScanCache",
]

# kind -> class; each class's ``task`` says what training makes of it: "segmentation" (images
# with label masks) or "patches" (labelled patches that train a patch classifier)
DATASETS: dict[str, Callable[..., Any]] = {
    "folder": FolderDataset,
    "voc": VOCDataset,
    "cityscapes": CityscapesDataset,
    "ade20k": ADE20KDataset,
    "patches": PatchFolderDataset,
}


def dataset_class(kind: str) -> type:
    """The class registered for ``kind``; an unknown kind is an error that lists the kinds."""
    if kind not in DATASETS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[kind]


def build_dataset(kind: str, root: str | os.PathLike, split: str, *, scan_cache: ScanCache | None = None,
                  **kw: Any):
    """``kind`` in ``DATASETS``; extra keywords go to the class (``transform`` for all; ``num_classes``,
    ``in_channels``, ``class_names``, ``mean``, ``std``, ``palette``, ``ignore_index`` for ``folder``;
    ``patch_size``, ``in_channels``, ``class_names``, ``mean``, ``std`` for ``patches``).
    ``scan_cache`` goes to the layouts that read files while they are built (``folder``
    counts the classes in the masks when it is given no class count)."""
    cls = dataset_class(kind)
    if scan_cache is not None and "scan_cache" in inspect.signature(cls).parameters:
        kw["scan_cache"] = scan_cache
    try:
        return cls(root, split, **kw)
    except TypeError as e:
        raise TypeError(f"dataset {kind!r}: {e}") from None


@dataclass
class DatasetReport:
    """What :func:`validate_dataset` saw: usable for class weights (``class_pixels``) and a summary line."""

    num_samples: int
    checked: int
    class_pixels: np.ndarray  # (num_classes,) int64 pixel count per class
    ignore_pixels: int
    image_sizes: set[tuple[int, int]] = field(default_factory=set)  # distinct (H, W)

    def __str__(self) -> str:
        total = int(self.class_pixels.sum()) + self.ignore_pixels
        present = int((self.class_pixels > 0).sum())
        return (f"{self.checked}/{self.num_samples} samples checked, {total} pixels, "
                f"{present}/{len(self.class_pixels)} classes present, "
                f"{self.ignore_pixels / max(total, 1):.1%} ignored, sizes {sorted(self.image_sizes)[:4]}"
                + (" ..." if len(self.image_sizes) > 4 else ""))


def scan_settings(ds: SegmentationDataset) -> str:
    """What, besides the files, decides a sample's scan result: the scan cache's settings key."""
    label_map = getattr(ds, "label_map", None)
    mapping = hashlib.sha1(np.ascontiguousarray(label_map).tobytes()).hexdigest()[:16] \
        if label_map is not None else "none"
    return (f"{type(ds).__name__}:classes={ds.num_classes}:channels={ds.in_channels}"
            f":ignore={ds.ignore_index}:labels={mapping}")


def validate_dataset(ds: SegmentationDataset, check_all: bool = True, max_reported: int = 20,
                     cache: ScanCache | None = None, progress: bool | None = None) -> DatasetReport:
    """Decode every sample (or the first 8 with ``check_all=False``) and check it.

    Finds missing masks, unreadable/truncated/non-image files, image/mask size mismatches and labels
    outside ``[0, num_classes)`` other than ``ignore_index``; all problems are gathered and raised
    together as one :class:`DatasetError` that names each file and its fix. Transforms are not applied.
    Samples are decoded in a thread pool; ``progress`` shows a progress bar on stderr (None: as
    the cache says). With a :class:`fcnseg.data.scan.ScanCache`, samples whose files and settings
    are unchanged since the cache recorded them are not decoded again (the cache's owner saves it).
    """
    n = len(ds)
    if n == 0:
        raise DatasetError(f"{getattr(ds, 'source', '') or type(ds).__name__}: the split is empty; "
                           "check the root and split name")
    indices = list(range(n) if check_all else range(min(n, 8)))

    def decode(j):
        image, mask = ds.load(indices[j])
        labels = np.bincount(mask.ravel(), minlength=256)
        present = np.flatnonzero(labels)
        return {"size": [int(v) for v in image.shape[:2]],
                "labels": present.tolist(), "pixels": labels[present].tolist()}

    files = [(ds.samples[i].image, ds.samples[i].mask) for i in indices]
    results, problems = scan(files, decode, settings=scan_settings(ds), cache=cache, progress=progress,
                             desc=f"scan {ds.source or type(ds).__name__}")
    if problems:
        shown = "\n- ".join(problems[:max_reported])
        more = f"\n... and {len(problems) - max_reported} more" if len(problems) > max_reported else ""
        raise DatasetError(f"{len(problems)} of {len(indices)} samples of {ds.source or type(ds).__name__} "
                           f"are unusable:\n- {shown}{more}")
    counts = np.zeros(256, np.int64)
    sizes: set[tuple[int, int]] = set()
    for r in results:
        sizes.add(tuple(r["size"]))
        np.add.at(counts, np.asarray(r["labels"], np.int64), np.asarray(r["pixels"], np.int64))
    return DatasetReport(num_samples=n, checked=len(indices), class_pixels=counts[: ds.num_classes].copy(),
                         ignore_pixels=int(counts[ds.ignore_index]), image_sizes=sizes)


def compute_mean_std(ds: SegmentationDataset, max_samples: int | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of the images in [0, 1] scale, over every pixel.

    Reads the raw images (no transform), converted to ``ds.in_channels``; accumulates in float64,
    so the result does not depend on the order or on image sizes beyond pixel weighting. Run it on
    the training split and store the result (classes.json ``mean``/``std``) so that validation and
    inference use the same numbers. ``max_samples`` takes evenly spaced samples to bound the cost.
    """
    n = len(ds)
    if max_samples is not None and max_samples < n:
        idx = np.linspace(0, n - 1, max_samples).round().astype(int)
    else:
        idx = np.arange(n)
    c = ds.in_channels
    s1 = np.zeros(c, np.float64)
    s2 = np.zeros(c, np.float64)
    count = 0
    for i in idx:
        x = to_float(to_channels(read_image(ds.samples[int(i)].image), c)).reshape(-1, c).astype(np.float64)
        s1 += x.sum(0)
        s2 += (x * x).sum(0)
        count += x.shape[0]
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean * mean, 0.0))
    return [float(m) for m in mean], [float(max(s, 1e-6)) for s in std]
