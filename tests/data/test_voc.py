"""fcnseg.data.voc: the Pascal VOC 2012 layout (palette masks, image lists)."""
from __future__ import annotations

import numpy as np
import pytest

from fcnseg.data import DatasetError, VOCDataset

from helpers import save_palette_mask, save_rgb


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
