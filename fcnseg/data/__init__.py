"""Datasets (folder, Pascal VOC, Cityscapes, ADE20K, labelled patches), image/mask decoding,
normalisation and augmentation."""
from .augment import build_transform
from .base import IMAGENET_MEAN, IMAGENET_STD, Sample, SegmentationDataset, default_mean_std, resolve_mean_std
from .datasets import (
    DATASETS, ADE20KDataset, CityscapesDataset, DatasetReport, FolderDataset, PatchFolderDataset, VOCDataset,
    build_dataset, compute_mean_std, dataset_class, validate_dataset,
)
from .errors import DatasetError, ImageReadError
from .io import (
    IMAGE_EXTENSIONS, apply_orientation, normalize, prepare_image, read_image, read_mask, to_channels, to_float,
)
from .scan import ScanCache

__all__ = [
    "ADE20KDataset", "CityscapesDataset", "DATASETS", "DatasetError", "DatasetReport", "FolderDataset",
    "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "ImageReadError", "PatchFolderDataset", "Sample",
    "ScanCache", "SegmentationDataset", "VOCDataset", "apply_orientation", "build_dataset", "build_transform",
    "compute_mean_std", "dataset_class", "default_mean_std", "resolve_mean_std",
    "normalize", "prepare_image", "read_image", "read_mask", "to_channels", "to_float",
    "validate_dataset",
]
