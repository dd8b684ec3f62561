"""Labelled patches in the torchvision ImageFolder layout, for training a patch classifier.

    root/
      train/<class name>/<any name>.<png|jpg|jpeg|bmp|tif|tiff|webp>
      val/<class name>/...

Class names are the folder names of the training split, sorted (as ImageFolder sorts
them), so class k is the k-th name; a validation split takes the training split's
names and may lack a class, never add one. Every patch of a dataset has one size, the
patch size of the classifier it trains: patches are never resized, because the dense
network later sees whole images at their native scale and a classifier trained on
rescaled patches would be applied at a scale it never learned. Gray and colour files
may be mixed: with one colour file the dataset is colour (gray patches get their value
in the three channels), else gray; RGBA counts as colour (alpha dropped), as in the
folder layout.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from fcnseg.data.palette import default_palette

from .base import require_dir, resolve_mean_std
from .errors import DatasetError, ImageReadError
from .folder import list_images
from .io import normalize, read_image, to_channels, to_float

_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees


class PatchSample(NamedTuple):
    image: Path
    label: int
    name: str  # <class folder>/<file stem>, unique within a split


def class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the class folders of a split (hidden folders skipped)."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _header(path: Path) -> tuple[tuple[int, int], bool]:
    """((height, width) as read_image will return it, is it colour) from the file header,
    without decoding the pixels; the decode (and its checks) happens in __getitem__."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
            colour = img.mode not in _GRAY_MODES
    except (OSError, SyntaxError, ValueError):
        read_image(path)  # raises ImageReadError naming the file and the fix
        raise ImageReadError(path, "cannot be opened as an image; remove it or convert it to PNG") from None
    if orientation in _SWAPPING_ORIENTATIONS:
        w, h = h, w
    return (h, w), colour


class PatchFolderDataset(Dataset):
    """``ds[i]`` -> ``dict(image=FloatTensor (C, P, Q) normalised, label=int, name=str)``.

    patch_size: the (P, Q) every file must have (None: the size most files have; the
    others are then named in the error). in_channels: 1 or 3 (None: from the files, see
    the module docstring). class_names: the classes in label order (None: this split's
    folders, sorted). mean/std: normalisation per channel (None: ImageNet's, as for the
    other layouts; the training run passes the training patches' own, from
    fcnseg.data.compute_mean_std). transform: an
    albumentations-style callable ``transform(image=...)`` on the decoded uint8/uint16
    (P, Q, C) patch; it may not change the size.
    """

    ignore_index = 255  # a checkpoint field; every patch is labelled
    task = "patches"  # trains a patch classifier (fcnseg.train's task registry)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        patch_size: Sequence[int] | None = None,
        in_channels: int | None = None,
        class_names: Sequence[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        transform: Callable[..., dict[str, Any]] | None = None,
    ):
        root = Path(root).expanduser()
        require_dir(root, "dataset root", "point root at the folder that holds train/ and val/")
        split_dir = root / split
        if not split_dir.is_dir():
            have = sorted(p.name for p in root.iterdir() if p.is_dir() and class_folders(p))
            raise DatasetError(f"{split_dir}: split {split!r} not found (splits present: {have or 'none'}). "
                               f"Fix: create {split_dir}/<class name>/ folders with the patches of each class")
        self.source = str(split_dir)
        folders = class_folders(split_dir)
        if not folders:
            raise DatasetError(f"{split_dir}: no class folders. Fix: put the patches of each class in a "
                               f"folder named after the class, {split_dir}/<class name>/*.png")
        names = list(class_names) if class_names is not None else folders
        extra = sorted(set(folders) - set(names))
        if extra:
            raise DatasetError(f"{split_dir}: class folders {extra} are not classes of the training split "
                               f"({names}). Fix: add them to the training split or remove them here")
        self.class_names = names
        self.num_classes = len(names)
        if self.num_classes < 2:
            raise DatasetError(f"{split_dir}: one class folder ({names}); a classifier needs at least two")

        self.samples: list[PatchSample] = []
        headers = []
        for label, cls in enumerate(names):
            if not (split_dir / cls).is_dir():
                continue  # a class absent from this split (allowed for validation)
            for p in list_images(split_dir / cls):
                self.samples.append(PatchSample(p, label, f"{cls}/{p.stem}"))
                headers.append(_header(p))
        if not self.samples:
            raise DatasetError(f"{split_dir}: the split is empty, no image files in its class folders. Fix: add "
                               f"patches with one of the image extensions (.png, .jpg, ...)")
        self.class_counts = np.bincount([s.label for s in self.samples], minlength=self.num_classes)

        sizes = [h for h, _ in headers]
        self.patch_size = tuple(int(v) for v in patch_size) if patch_size is not None else \
            Counter(sizes).most_common(1)[0][0]
        odd = [(s, size) for s, size in zip(self.samples, sizes) if size != self.patch_size]
        if odd:
            P, Q = self.patch_size
            shown = "\n  ".join(f"{s.image} is {size[1]}x{size[0]}" for s, size in odd[:5])
            more = f"\n  ... and {len(odd) - 5} more" if len(odd) > 5 else ""
            raise DatasetError(
                f"{len(odd)} patch(es) of {split_dir} are not {Q}x{P} (WxH) like the others:\n  {shown}{more}\n"
                f"Fix: cut every patch at {Q}x{P}, or remove the odd ones. Patches are never resized: the "
                f"dense network sees whole images at their native scale")

        colour = any(c for _, c in headers)
        self.in_channels = int(in_channels) if in_channels is not None else (3 if colour else 1)
        if self.in_channels not in (1, 3):
            raise DatasetError(f"{split_dir}: in_channels must be 1 (gray) or 3 (colour); got {self.in_channels}")
        self.mean, self.std = resolve_mean_std(mean, std, self.in_channels, str(split_dir))
        self.palette = [list(map(int, c)) for c in palette] if palette is not None \
            else default_palette(self.num_classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> np.ndarray:
        """The decoded patch before any transform: (P, Q, in_channels) uint8/uint16."""
        s = self.samples[i]
        image = to_channels(read_image(s.image), self.in_channels)
        if image.shape[:2] != self.patch_size:  # a header that lied about the size
            raise DatasetError(f"{s.image} decodes to {image.shape[1]}x{image.shape[0]} (WxH), not the "
                               f"dataset's {self.patch_size[1]}x{self.patch_size[0]}; re-export the file")
        return image

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.load(i)
        if self.transform is not None:
            out = self.transform(image=image)["image"]
            if not isinstance(out, np.ndarray):
                raise DatasetError(f"the transform returned {type(out).__name__} instead of a numpy array; remove "
                                   f"ToTensorV2 (and Normalize): the dataset converts and normalises itself")
            if out.shape[:2] != self.patch_size:
                raise DatasetError(
                    f"the augmentation changed the patch size from {self.patch_size} to {out.shape[:2]} "
                    f"(on {self.samples[i].image}); patches are never resized or cropped: the classifier "
                    f"must see the scale and extent the dense network sees. Use a size-keeping "
                    f"augmentation (aug=flip or aug=none)")
            image = out if out.ndim == 3 else out[:, :, None]
        x = normalize(to_float(image), self.mean, self.std)  # (C, P, Q)
        return dict(image=x, label=torch.tensor(self.samples[i].label), name=self.samples[i].name)

    @property
    def meta(self) -> dict[str, Any]:
        """What a checkpoint must store to reproduce the input pipeline and to name the outputs."""
        return dict(num_classes=self.num_classes, class_names=list(self.class_names),
                    palette=[list(c) for c in self.palette], in_channels=self.in_channels,
                    mean=list(self.mean), std=list(self.std), ignore_index=self.ignore_index)

    def __repr__(self) -> str:
        P, Q = self.patch_size
        return (f"PatchFolderDataset({self.source!r}, {len(self)} patches of {Q}x{P}, "
                f"{self.num_classes} classes, {self.in_channels} channels)")

