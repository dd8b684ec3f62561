"""fcnseg.compare_dense, and patchwise / DenseClassifier on classifiers with several outputs."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fcnseg

from helpers import K, check_dense, f64, lecture_net


class TwoHeads(nn.Module):
    """A shared trunk and two heads (class scores and a 5-vector), returned as a dict."""

    def __init__(self, squeeze_excite=False):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.gate = nn.Conv2d(4, 4, 1) if squeeze_excite else None
        self.cls = nn.Conv2d(4, K, 2)
        self.box = nn.Conv2d(4, 5, 2)
        self.patch_size = (6, 6)           # 6 -conv3-> 4 -pool2-> 2 -conv2-> 1

    def forward(self, x):
        f = self.body(x)
        if self.gate is not None:          # a patch-global gate: the heads run per patch
            f = f * torch.sigmoid(self.gate(F.adaptive_avg_pool2d(f, 1)))
        return {"cls": self.cls(f), "box": self.box(f).flatten(1)}


@pytest.mark.parametrize("squeeze_excite", [False, True])
def test_dict_outputs_are_exact_per_head(squeeze_excite):
    model = f64(TwoHeads(squeeze_excite))
    x = torch.randn(2, 2, 9, 8, dtype=torch.float64)
    dense = fcnseg.densify(model)
    assert (dense.per_patch_tail is not None) == squeeze_excite
    out = dense(x)
    assert set(out) == {"cls", "box"} and out["cls"].shape == (2, K, 9, 8) and out["box"].shape == (2, 5, 9, 8)
    check_dense(model, x)


def test_patchwise_keeps_the_output_structure_and_nan_elsewhere():
    model = f64(TwoHeads())
    x = torch.randn(1, 2, 7, 5, dtype=torch.float64)
    mask = torch.zeros(7, 5, dtype=torch.bool)
    mask[3, 1] = True
    ref = fcnseg.patchwise(model, x, pixels=mask)
    assert ref["cls"].shape == (1, K, 7, 5) and ref["box"].shape == (1, 5, 7, 5)
    assert not ref["box"][0, :, 3, 1].isnan().any() and ref["box"][0, :, 0, 0].isnan().all()
    patch = fcnseg.crop_patches(x, torch.tensor([[3, 1]]), model.patch_size)
    torch.testing.assert_close(ref["cls"][0, :, 3, 1], model(patch)["cls"].reshape(-1))
    none = fcnseg.patchwise(model, x, pixels=torch.zeros(7, 5, dtype=torch.bool))
    assert none["box"].shape == (1, 5, 7, 5) and none["box"].isnan().all()


def test_a_wrong_dense_network_fails_the_comparison():
    model = f64(lecture_net())
    x = torch.randn(1, 3, 11, 10, dtype=torch.float64)
    good = fcnseg.compare_dense(fcnseg.densify(model, 15), model, x)
    assert good.ok(1e-9) and good.pixels == 110 and good.label_mismatches == 0
    # the same network padded by another rule: right inside, wrong near the border
    wrong = fcnseg.compare_dense(fcnseg.densify(model, 15, pad_mode="replicate"), model, x, pad_mode="constant")
    assert not wrong.ok(1e-3) and wrong.max_abs > 1e-3


def test_given_dense_scores_and_off_grid_pixels():
    model = f64(lecture_net())
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    dense = fcnseg.densify(model, 15, output_stride=2)
    pixels = torch.tensor([[0, 0], [4, 10], [10, 2]])
    with torch.no_grad():
        scores = dense(x)[:, :, pixels[:, 0] // 2, pixels[:, 1] // 2]       # (1, K, 3)
    result = fcnseg.compare_dense(dense, model, x, pixels, dense_scores=scores)
    assert result.ok(1e-9) and result.pixels == 3 and result.dense_seconds == 0.0
    bad = scores.clone()
    bad[0, :, 1] += 1.0
    assert fcnseg.compare_dense(dense, model, x, pixels, dense_scores=bad).max_abs == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"pixel \(3, 4\) is not on the output grid"):
        fcnseg.compare_dense(dense, model, x, torch.tensor([[3, 4]]))


def test_random_grid_pixels_cover_the_grid_border():
    mask = fcnseg.random_grid_pixels(20, 17, 3, count=5, seed=1)
    grid = fcnseg.grid_pixels(20, 17, 3)
    assert not (mask & ~grid).any()                              # only pixels the dense net computes
    assert mask[0, ::3].all() and mask[::3, 0].all() and mask[18, ::3].all() and mask[::3, 15].all()
    inner = mask.clone()
    inner[0, :] = inner[18, :] = inner[:, 0] = inner[:, 15] = False
    assert 1 <= int(inner.sum()) <= 5
