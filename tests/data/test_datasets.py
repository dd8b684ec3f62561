from __future__ import annotations

import json

import albumentations as A
import numpy as np
import pytest
import torch

from fcnseg.data import (
    ADE20KDataset, CityscapesDataset, DatasetError, FolderDataset, IMAGENET_MEAN, VOCDataset, build_dataset,
    compute_mean_std, validate_dataset,
)
from fcnseg.data.cityscapes import cityscapes_label_map

from helpers import make_folder_tree, save_gray, save_palette_mask, save_rgb


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


def test_voc_layout_palette_masks_and_parent_root(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    for i in ("2007_000032", "2007_000039"):
        save_rgb(base / "JPEGImages" / f"{i}.jpg", rng.integers(0, 256, (9, 11, 3)))
        labels = np.zeros((9, 11), np.uint8)
        labels[2:6, 3:8] = 15  # person
        labels[1, :] = 255  # object border
        save_palette_mask(base / "SegmentationClass" / f"{i}.png", labels)
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n2007_000039\n")
    for root in (tmp_path, tmp_path / "VOCdevkit", base):
        ds = VOCDataset(root, "train")
        assert len(ds) == 2 and ds.num_classes == 21 and ds.class_names[15] == "person"
    item = ds[0]
    assert item["name"] == "2007_000032" and item["image"].shape == (3, 9, 11)
    assert set(item["mask"].unique().tolist()) == {0, 15, 255}
    with pytest.raises(DatasetError, match=r"lists present: \['train'\]"):
        VOCDataset(tmp_path, "val")


def test_cityscapes_label_ids_become_train_ids(tmp_path):
    lut = cityscapes_label_map()
    assert (lut[7], lut[26], lut[0], lut[33], lut[9]) == (0, 13, 255, 18, 255)
    stem = "aachen_000000_000019"
    save_rgb(tmp_path / f"leftImg8bit/train/aachen/{stem}_leftImg8bit.png", np.zeros((4, 6, 3)))
    ids = np.array([[7, 7, 26, 26, 0, 33]] * 4, np.uint8)
    save_gray(tmp_path / f"gtFine/train/aachen/{stem}_gtFine_labelIds.png", ids)
    ds = CityscapesDataset(tmp_path, "train")
    item = ds[0]
    assert ds.num_classes == 19 and ds.class_names[13] == "car" and item["name"] == stem
    assert item["mask"][0].tolist() == [0, 0, 13, 13, 255, 18]


def test_ade20k_shifts_labels_and_maps_split_names(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    save_rgb(base / "images/validation/ADE_val_00000001.jpg", np.zeros((3, 4, 3)))
    save_gray(base / "annotations/validation/ADE_val_00000001.png", np.array([[0, 1, 150, 2]] * 3))
    ds = ADE20KDataset(tmp_path, "val")
    assert ds.num_classes == 150 and ds.class_names[0] == "wall" and ds.class_names[149] == "flag"
    assert ds[0]["mask"][0].tolist() == [255, 0, 149, 1]
    save_gray(base / "annotations/validation/ADE_val_00000001.png", np.array([[151, 1, 1, 1]] * 3))
    with pytest.raises(DatasetError, match=r"labels 150 \(after this dataset's label mapping\)"):
        ds[0]


def test_build_dataset_dispatch(folder_root):
    assert isinstance(build_dataset("folder", folder_root, "train", num_classes=4), FolderDataset)
    with pytest.raises(ValueError, match="choose one of"):
        build_dataset("coco", folder_root, "train")


def test_validate_dataset_report_counts_every_pixel(folder_root):
    ds = FolderDataset(folder_root, "train")
    rep = validate_dataset(ds)
    assert rep.checked == 3 and rep.ignore_pixels == 3  # one ignore pixel per mask
    assert int(rep.class_pixels.sum()) + rep.ignore_pixels == 3 * 12 * 10 and rep.image_sizes == {(12, 10)}


def test_compute_mean_std_exact(tmp_path):
    save_gray(tmp_path / "train/images/a.png", np.zeros((4, 4)))
    save_gray(tmp_path / "train/images/b.png", np.full((4, 4), 255))
    for s in "ab":
        save_gray(tmp_path / f"train/masks/{s}.png", np.zeros((4, 4)))
    mean, std = compute_mean_std(FolderDataset(tmp_path, "train", num_classes=2))
    assert mean == pytest.approx([0.5]) and std == pytest.approx([0.5])


# ---- bad data: each error names the file and says how to fix it ----

def test_missing_mask(folder_root):
    (folder_root / "train/masks/s1.png").unlink()
    with pytest.raises(DatasetError, match="have no mask") as e:
        FolderDataset(folder_root, "train", num_classes=4)
    assert str(folder_root / "train/masks/s1.png") in str(e.value) and "Fix" in str(e.value)


def test_missing_mask_after_construction_found_by_validate(folder_root):
    ds = FolderDataset(folder_root, "train", num_classes=4)
    (folder_root / "train/masks/s2.png").unlink()
    with pytest.raises(DatasetError, match="1 of 3 samples") as e:
        validate_dataset(ds)
    assert "s2.png: file not found" in str(e.value)


def test_size_mismatch(folder_root):
    save_gray(folder_root / "train/masks/s0.png", np.zeros((12, 11), np.uint8))
    ds = FolderDataset(folder_root, "train", num_classes=4)
    with pytest.raises(DatasetError, match="is 10x12 \\(WxH\\) but its mask .* is 11x12") as e:
        ds[0]
    assert "nearest-neighbour" in str(e.value)
    with pytest.raises(DatasetError, match="s0.png"):
        validate_dataset(ds)


def test_out_of_range_label(folder_root):
    m = np.zeros((12, 10), np.uint8)
    m[3, 3] = 9
    save_gray(folder_root / "train/masks/s2.png", m)
    ds = FolderDataset(folder_root, "train", num_classes=4)
    with pytest.raises(DatasetError, match=r"s2.png: labels 9 are outside \[0, 4\).*at least 10"):
        validate_dataset(ds)
    with pytest.raises(DatasetError, match="outside"):
        ds[2]


def test_truncated_image(folder_root):
    p = folder_root / "train/images/s1.png"
    p.write_bytes(p.read_bytes()[:100])
    ds = FolderDataset(folder_root, "train", num_classes=4)
    with pytest.raises(DatasetError, match="s1.png: truncated or corrupt"):
        validate_dataset(ds)


def test_non_image_file(folder_root):
    (folder_root / "train/images/s1.png").write_text("not a picture")
    (folder_root / "train/images/readme.txt").write_text("ignored: not an image extension")
    ds = FolderDataset(folder_root, "train", num_classes=4)
    assert len(ds) == 3
    with pytest.raises(DatasetError, match="s1.png: not an image file"):
        ds[1]


def test_empty_split(tmp_path):
    (tmp_path / "train/images").mkdir(parents=True)
    (tmp_path / "train/masks").mkdir(parents=True)
    (tmp_path / "train/images/a.gif").write_bytes(b"GIF89a")
    with pytest.raises(DatasetError, match=r"split is empty.*found: \['.gif'\].*\.png") as e:
        FolderDataset(tmp_path, "train", num_classes=2)
    assert str(tmp_path / "train/images") in str(e.value)
    with pytest.raises(DatasetError, match=r"split 'val' not found \(splits present: \['train'\]\)"):
        FolderDataset(tmp_path, "val", num_classes=2)
