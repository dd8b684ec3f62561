"""Batches and their seeds (fcnseg.train.loaders)."""
import pytest
import torch

from fcnseg.train import TrainingError
from fcnseg.train.loaders import collate_images, collate_patches, epoch_seed, worker_count


def test_auto_workers_are_none_on_the_cpu_and_four_per_gpu():
    assert worker_count("auto", "cpu") == 0 and worker_count("auto", torch.device("cuda", 1)) == 4
    assert worker_count(3, "cpu") == 3


def test_batches_and_seeds():
    a = {"image": torch.zeros(1, 4, 4), "mask": torch.zeros(4, 4, dtype=torch.long), "name": "a"}
    b = {"image": torch.zeros(1, 5, 4), "mask": torch.zeros(5, 4, dtype=torch.long), "name": "b"}
    assert collate_images([a, a])["image"].shape == (2, 1, 4, 4)
    with pytest.raises(TrainingError, match=r"differ in size .*\(a, b\)") as e:
        collate_images([a, b])
    assert "aug=scale_crop" in e.value.fixes
    p = {"image": torch.zeros(1, 3, 3), "label": torch.tensor(2), "name": "c/p"}
    assert collate_patches([p, p])["mask"].tolist() == [2, 2]
    assert epoch_seed(0, 1) != epoch_seed(0, 2) != epoch_seed(1, 1)
