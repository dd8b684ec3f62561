"""fcnseg.data.cityscapes: label ids mapped to the 19 train ids."""
from __future__ import annotations

import numpy as np

from fcnseg.data import CityscapesDataset
from fcnseg.data.cityscapes import cityscapes_label_map

from helpers import save_gray, save_rgb


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
