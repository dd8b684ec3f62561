"""fcnseg.data.datasets: the builder by name, the full-scan validator, mean/std, and the
errors every layout raises for broken data."""
from __future__ import annotations

import numpy as np
import pytest

from fcnseg.data import DatasetError, FolderDataset, build_dataset, compute_mean_std, validate_dataset

from helpers import save_gray


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
