import math

import torch

from fcnseg.train.metrics import ConfusionMatrix


def test_confusion_matrix_matches_counting_by_hand():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (3, 17, 13), generator=g)
    pred = torch.randint(0, 5, (3, 17, 13), generator=g)
    target[0, :4] = 255
    cm = ConfusionMatrix(5)
    cm.update(target, pred)
    keep = target != 255
    t, p = target[keep], pred[keep]
    for c in range(5):
        inter = ((t == c) & (p == c)).sum().item()
        union = ((t == c) | (p == c)).sum().item()
        assert math.isclose(cm.compute()["per_class_iou"][c], inter / union)
    assert math.isclose(cm.compute()["pixel_acc"], (t == p).double().mean().item())
    assert cm.mat.sum() == keep.sum()


def test_absent_class_is_nan_and_left_out_of_the_mean():
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 0, 1, 0])
    cm = ConfusionMatrix(4)
    cm.update(target, pred)
    r = cm.compute()
    assert math.isnan(r["per_class_iou"][2]) and math.isnan(r["per_class_iou"][3])
    assert math.isclose(r["per_class_iou"][0], 2 / 3) and math.isclose(r["per_class_iou"][1], 1 / 2)
    assert math.isclose(r["miou"], (2 / 3 + 1 / 2) / 2)


def test_label_out_of_range_is_refused():
    cm = ConfusionMatrix(3)
    try:
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    except ValueError as e:
        assert "[0, 3)" in str(e)
    else:
        raise AssertionError("label 3 with 3 classes must be refused")
