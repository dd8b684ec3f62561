"""fcnseg.data.ade20k: the ADEChallengeData2016 layout, labels shifted to 0..149."""
from __future__ import annotations

import numpy as np
import pytest

from fcnseg.data import ADE20KDataset, DatasetError

from helpers import save_gray, save_rgb


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
