"""The dataset base class shared by every layout (folder, VOC, Cityscapes, ADE20K).

A concrete dataset only lists its samples (image path, mask path, name) and its class metadata;
decoding, channel conversion, label remapping, the label check, the joint transform and the
normalisation all happen here, so every layout behaves the same way.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from fcnseg.data.palette import default_palette

from .errors import DatasetError
from .io import normalize, read_image, read_mask, to_channels, to_float

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# One-channel counterparts: the mean of the three channel statistics (timm's convention for in_chans=1).
IMAGENET_GRAY_MEAN = [0.449]
IMAGENET_GRAY_STD = [0.226]


def default_mean_std(in_channels: int) -> tuple[list[float], list[float]]:
    """ImageNet statistics for 3 channels, their channel average for 1; 4 channels have no default."""
    if in_channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    if in_channels == 1:
        return list(IMAGENET_GRAY_MEAN), list(IMAGENET_GRAY_STD)
    raise DatasetError(
        f"no default normalisation for {in_channels}-channel images; compute it with "
        "fcnseg.data.compute_mean_std(dataset) and pass mean=/std= (or put them into classes.json)"
    )


def resolve_mean_std(mean: Sequence[float] | None, std: Sequence[float] | None, in_channels: int,
                     source: str = "", fallback: Callable[[], tuple[Sequence[float], Sequence[float]]] | None = None,
                     ) -> tuple[list[float], list[float]]:
    """The normalisation of an ``in_channels`` dataset: the given ``mean``/``std``, each one left
    None taken from ``fallback()`` (default: :func:`default_mean_std`), checked to hold one
    value per channel and a positive std. The one place every dataset and the training run
    settle their statistics."""
    if mean is None or std is None:
        fmean, fstd = fallback() if fallback is not None else default_mean_std(in_channels)
        mean = fmean if mean is None else mean
        std = fstd if std is None else std
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != in_channels or len(std) != in_channels:
        raise DatasetError(f"{source}: mean/std need {in_channels} values (one per channel); "
                           f"got mean={mean} std={std}")
    if any(s <= 0 for s in std):
        raise DatasetError(f"{source}: std must be positive; got {std}")
    return mean, std


class Sample(NamedTuple):
    image: Path
    mask: Path
    name: str


def check_labels(mask: np.ndarray, num_classes: int, ignore_index: int, path: os.PathLike | str,
                 mapped: bool = False) -> None:
    """Raise if ``mask`` holds a label outside ``[0, num_classes)`` other than ``ignore_index``.

    An out-of-range label would otherwise surface much later as a CUDA device-side assert in the
    loss, with no hint of which file caused it.
    """
    if mask.size == 0 or int(mask.max()) < num_classes:
        return
    bad = (mask >= num_classes) & (mask != ignore_index)
    if bad.any():
        values = np.unique(mask[bad])
        shown = ", ".join(str(int(v)) for v in values[:10]) + (" ..." if len(values) > 10 else "")
        where = " (after this dataset's label mapping)" if mapped else ""
        raise DatasetError(
            f"{path}: labels {shown}{where} are outside [0, {num_classes}) and are not the ignore "
            f"label {ignore_index} ({int(bad.sum())} pixels). Fix: set num_classes to at least "
            f"{int(values.max()) + 1} if these are real classes, or write {ignore_index} into those pixels"
        )


class SegmentationDataset(Dataset):
    """Base: ``ds[i]`` -> ``dict(image=FloatTensor (C, H, W) normalised, mask=LongTensor (H, W), name=str)``.

    ``transform`` (e.g. an ``albumentations.Compose``) is called as ``transform(image=..., mask=...)``
    on the decoded ``(H, W, C)`` uint8/uint16 image and its ``(H, W)`` uint8 mask, before scaling and
    normalisation, so geometric augmentations move both together. It must return numpy arrays:
    leave ``Normalize`` and ``ToTensorV2`` out, the dataset does both with its own statistics.
    """

    ignore_index: int = 255
    task = "segmentation"  # what training does with this kind of data (fcnseg.train's task registry)

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        in_channels: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: Callable[..., dict[str, Any]] | None = None,
        label_map: np.ndarray | None = None,
        ignore_index: int = 255,
        source: str = "",
    ):
        self.samples = list(samples)
        self.source = source  # where the samples were listed from, for error messages
        if not self.samples:
            raise DatasetError(f"{source or 'dataset'}: the split is empty (no image/mask pairs found); "
                               "check the root and split name, and that the files have image extensions")
        if not 0 < num_classes <= 256:
            raise DatasetError(f"{source}: num_classes must be in 1..256 (masks are 8-bit); got {num_classes}")
        if in_channels not in (1, 3, 4):
            raise DatasetError(f"{source}: in_channels must be 1, 3 or 4; got {in_channels}")
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else [f"class_{k}" for k in range(num_classes)]
        if len(self.class_names) != self.num_classes:
            raise DatasetError(f"{source}: {len(self.class_names)} class names for {num_classes} classes; "
                               "give exactly one name per class")
        self.palette = [list(map(int, c)) for c in palette] if palette is not None else default_palette(num_classes)
        if len(self.palette) != self.num_classes or any(len(c) != 3 for c in self.palette):
            raise DatasetError(f"{source}: palette must hold {num_classes} [r, g, b] triples; "
                               f"got {len(self.palette)} entries")
        self.in_channels = int(in_channels)
        self.mean, self.std = resolve_mean_std(mean, std, self.in_channels, source)
        self.ignore_index = int(ignore_index)
        self.transform = transform
        self.label_map = label_map  # (256,) uint8 lookup table from stored labels to training labels, or None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def meta(self) -> dict[str, Any]:
        """What a checkpoint must store to reproduce the input pipeline and to name the outputs."""
        return dict(num_classes=self.num_classes, class_names=list(self.class_names),
                    palette=[list(c) for c in self.palette], in_channels=self.in_channels,
                    mean=list(self.mean), std=list(self.std), ignore_index=self.ignore_index)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded sample before any transform: image ``(H, W, in_channels)`` uint8/uint16, mask ``(H, W)`` uint8."""
        s = self.samples[i]
        image = to_channels(read_image(s.image), self.in_channels)
        mask = read_mask(s.mask)
        if self.label_map is not None:
            mask = self.label_map[mask]
        if image.shape[:2] != mask.shape:
            raise DatasetError(
                f"{s.image} is {image.shape[1]}x{image.shape[0]} (WxH) but its mask {s.mask} is "
                f"{mask.shape[1]}x{mask.shape[0]}. Fix: resize the mask to the image size with "
                "nearest-neighbour interpolation (never bilinear: it invents labels), or re-export the pair"
            )
        check_labels(mask, self.num_classes, self.ignore_index, s.mask, mapped=self.label_map is not None)
        return image, mask

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, mask = self.load(i)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
            if not isinstance(image, np.ndarray) or not isinstance(mask, np.ndarray):
                raise DatasetError(
                    f"the transform returned {type(image).__name__} instead of a numpy array; remove "
                    "ToTensorV2 (and Normalize) from the pipeline: the dataset converts and normalises itself"
                )
            if image.ndim == 2:
                image = image[:, :, None]
        x = normalize(to_float(image), self.mean, self.std)  # (C, H, W)
        y = torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))  # (H, W)
        return dict(image=x, mask=y, name=self.samples[i].name)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.source!r}, {len(self)} samples, {self.num_classes} classes, "
                f"{self.in_channels} channels)")


def require_dir(path: Path, what: str, fix: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} not found. Fix: {fix}")
    return path


def check_masks_exist(samples: Sequence[Sample], fix: str) -> None:
    missing = [s for s in samples if not s.mask.is_file()]
    if missing:
        shown = "\n  ".join(f"{s.image} -> {s.mask}" for s in missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetError(f"{len(missing)} image(s) have no mask:\n  {shown}{more}\nFix: {fix}")
