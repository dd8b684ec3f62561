"""fcnseg.data.folder: the plain images/ + masks/ layout, its classes.json and joint transforms."""
from __future__ import annotations

import json

import albumentations as A
import numpy as np
import pytest
import torch

from fcnseg.data import IMAGENET_MEAN, DatasetError, FolderDataset

from helpers import make_folder_tree, save_gray


def test_folder_items_shapes_and_inferred_metadata(folder_root):
    ds = FolderDataset(folder_root, "train")
    assert len(ds) == 3 and ds.num_classes == 4 and ds.in_channels == 3  # max label 3 over all splits, RGB files
    assert ds.mean == IMAGENET_MEAN and ds.class_names == ["class_0", "class_1", "class_2", "class_3"]
    item = ds[1]
    assert item["image"].shape == (3, 12, 10) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (12, 10) and item["mask"].dtype == torch.int64
    assert item["name"] == "s1" and int(item["mask"][0, 0]) == 255
    assert set(ds.meta) >= {"num_classes", "class_names", "palette", "in_channels", "mean", "std", "ignore_index"}


def test_folder_classes_json_and_normalisation(folder_root):
    names = ["bg", "a", "b", "c", "d"]
    (folder_root / "classes.json").write_text(json.dumps(
        {"names": names, "palette": [[i, i, i] for i in range(5)], "mean": [0.5], "std": [0.25], "in_channels": 1}))
    ds = FolderDataset(folder_root, "val")
    assert ds.num_classes == 5 and ds.class_names == names and ds.in_channels == 1 and ds.palette[3] == [3, 3, 3]
    raw, _ = ds.load(0)  # RGB files converted to gray for a 1-channel dataset
    x = ds[0]["image"]
    assert raw.shape == (12, 10, 1) and x.shape == (1, 12, 10)
    assert torch.allclose(x[0], (torch.from_numpy(raw[:, :, 0]).float() / 255 - 0.5) / 0.25)
    with pytest.raises(DatasetError, match="5 class names but num_classes is 7"):
        FolderDataset(folder_root, "val", num_classes=7)


def test_folder_mixed_gray_and_colour_follow_first_image(tmp_path):
    make_folder_tree(tmp_path, "train", n=1, channels=3)
    save_gray(tmp_path / "train/images/s9.png", np.full((12, 10), 77, np.uint8))
    save_gray(tmp_path / "train/masks/s9.png", np.zeros((12, 10), np.uint8))
    ds = FolderDataset(tmp_path, "train", num_classes=4)
    raw, _ = ds.load(1)
    assert ds.in_channels == 3 and raw.shape == (12, 10, 3) and (raw == 77).all()
    gray = FolderDataset(tmp_path, "train", num_classes=4, in_channels=1)
    assert gray[0]["image"].shape == (1, 12, 10)


def test_joint_transform_keeps_image_and_mask_aligned(tmp_path):
    h, w = 8, 12
    cols = np.tile(np.arange(w, dtype=np.uint8) * 20, (h, 1))  # image value encodes the column
    save_gray(tmp_path / "train/images/a.png", cols)
    save_gray(tmp_path / "train/masks/a.png", np.tile(np.arange(w, dtype=np.uint8), (h, 1)))
    tf = A.Compose([A.HorizontalFlip(p=1.0), A.RandomCrop(6, 7)])
    ds = FolderDataset(tmp_path, "train", num_classes=w, transform=tf, mean=[0.0], std=[1.0])
    item = ds[0]
    img = (item["image"][0] * 255).round().long()
    assert item["mask"].shape == (6, 7)
    assert torch.equal(img, item["mask"] * 20)  # every pixel still sits on its own label
    assert (item["mask"][:, 0] > item["mask"][:, -1]).all()  # and the flip really happened


def test_transform_returning_tensors_is_refused(folder_root):
    from albumentations.pytorch import ToTensorV2

    ds = FolderDataset(folder_root, "train", transform=A.Compose([ToTensorV2()]))
    with pytest.raises(DatasetError, match="remove ToTensorV2"):
        ds[0]
