"""Tiled dense inference equals the untiled pass: labels exactly, scores in float64."""
import numpy as np
import pytest
import torch

import fcnseg
from fcnseg.infer.tiling import auto_tile_size, build_window, fold_index, plan_tiles, predict_tiled

from helpers import toy_model


@pytest.mark.parametrize("mode,np_mode", [("reflect", "reflect"), ("replicate", "edge")])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_fold_index_is_np_pad(mode, np_mode, n):
    pad = 13  # longer than the line: repeated reflection
    want = np.pad(np.arange(n), pad, mode=np_mode)
    assert np.array_equal(fold_index(np.arange(-pad, n + pad), n, mode), want)


def test_build_window_constant_fills_outside():
    x = torch.arange(12.0).view(1, 3, 4)
    win = build_window(x, np.arange(-1, 4), np.arange(2, 6), "constant", -7.0)
    want = np.pad(x[0].numpy(), 2, constant_values=-7.0)[1:6, 4:8]
    assert np.array_equal(win[0].numpy(), want)


def test_plan_covers_every_cell_once_with_a_short_last_tile():
    plan = plan_tiles(41, 29, (15, 15), 2, 8)  # 21 x 15 cells, tiles of 4 cells
    assert (plan.rows, plan.cols, plan.tile_rows) == (21, 15, 4)
    cover = np.zeros((plan.rows, plan.cols), int)
    for m, n in plan.origins:
        assert m % 4 == 0 and n % 4 == 0  # no tile shifted back over its neighbour
        h, w = plan.tile_shape(m, n)
        cover[m:m + h, n:n + w] += 1
        assert len(plan.window_indices(m, n)[0]) == (h - 1) * 2 + 15
    assert (cover == 1).all()  # every cell computed once: no overlap, no gap
    assert plan.tile_shape(20, 12) == (1, 3)  # the last tile ends at the grid's border
    assert plan.window_shape == (3 * 2 + 15, 3 * 2 + 15)  # the largest tile's


def test_plan_tile_is_the_budget_not_the_image():
    """Every image of at least tile_size gets tiles of tile_size: the peak memory is the same."""
    for side in (6000, 20000, 2800):
        plan = plan_tiles(side, side, (84, 84), 8, 2792)
        assert (plan.tile_rows, plan.tile_cols) == (349, 349), side
    assert plan_tiles(2000, 100, (84, 84), 8, 2792).tile_rows == 250  # smaller: one tile, whole


@pytest.fixture(scope="module")
def model64():
    return toy_model(num_classes=5).double()


@pytest.mark.parametrize("stride", [1, 2, 6])
@pytest.mark.parametrize("pad_mode,pad_value", [("constant", 0.3), ("reflect", 0.0)])
def test_tiled_equals_untiled(model64, stride, pad_mode, pad_value):
    dense = fcnseg.densify(model64, output_stride=stride, pad_mode=pad_mode,
                           pad_value=pad_value).eval()
    x = torch.randn(3, 47, 38, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = dense(x[None])[0]  # (K, ceil(47/s), ceil(38/s))
    assert ref.shape[1:] == (-(-47 // stride), -(-38 // stride))
    for tile in (3 * stride, 7 * stride, 10, 25, 0):  # 10, 25 divide neither side nor stride
        if tile and tile < stride:
            continue
        p = predict_tiled(dense, x, tile, batch_size=3)
        assert torch.equal(p.labels.long(), ref.argmax(0)), tile
        assert torch.allclose(p.scores, ref, rtol=1e-12, atol=1e-12), \
            (tile, (p.scores - ref).abs().max())
    # the labels are not trivially constant, so the equality above means something
    assert len(torch.unique(ref.argmax(0))) > 1


def test_short_last_tile_in_both_axes_equals_untiled(model64):
    """Stride 2, 24 x 19 cells in tiles of 7: the last row of tiles is 3 cells, the last column 5;
    tiles of several shapes in one batch_size."""
    dense = fcnseg.densify(model64, output_stride=2, pad_mode="reflect").eval()
    x = torch.randn(3, 47, 38, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = dense(x[None])[0]
    plan = plan_tiles(47, 38, dense.patch_size, 2, 15)  # 15 rounds down to 14 pixels, 7 cells
    assert (plan.rows, plan.cols, plan.tile_rows) == (24, 19, 7)
    assert plan.tile_shape(*plan.origins[-1]) == (3, 5)
    p = predict_tiled(dense, x, 15, batch_size=3)
    assert torch.equal(p.labels.long(), ref.argmax(0))
    assert torch.allclose(p.scores, ref, rtol=1e-12, atol=1e-12), (p.scores - ref).abs().max()
    assert len(torch.unique(ref.argmax(0))) > 1


def test_raw_image_with_transform_and_region(model64):
    dense = fcnseg.densify(model64, output_stride=2, pad_mode="replicate").eval()
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (33, 26, 3), dtype=np.uint8)

    def transform(a):  # (h, w, C) uint8 -> (C, h, w) float64
        return (torch.from_numpy(a).permute(2, 0, 1).double() / 255 - 0.5) / 0.25

    x = transform(raw)
    with torch.no_grad():
        ref = dense(x[None])[0]
    p = predict_tiled(dense, raw, 6, transform=transform)
    assert torch.allclose(p.scores, ref, rtol=1e-12, atol=1e-12)
    # region (top, left, h, w) = (5, 3, 20, 11): rows m*2 in [5, 25) -> m in [3, 13),
    # columns n*2 in [3, 14) -> n in [2, 7)
    r = predict_tiled(dense, x, 4, region=(5, 3, 20, 11))
    assert (r.row0, r.col0) == (3, 2) and r.scores.shape[1:] == (10, 5)
    assert torch.allclose(r.scores, ref[:, 3:13, 2:7], rtol=1e-12, atol=1e-12)


def test_scores_out_array_is_filled(model64):
    dense = fcnseg.densify(model64, pad_mode="reflect").eval()
    x = torch.randn(3, 20, 17, dtype=torch.float64)
    out = np.zeros((5, 20, 17), np.float16)
    p = predict_tiled(dense, x, 8, scores_out=out, return_scores=False)
    with torch.no_grad():
        ref = dense(x[None])[0].numpy()
    assert p.scores is out
    np.testing.assert_allclose(out, ref.astype(np.float16), rtol=1e-3, atol=1e-3)


def test_auto_tile_size_grows_with_budget_and_respects_stride():
    dense = fcnseg.densify(toy_model(), output_stride=2).eval()
    sizes = [auto_tile_size(dense, 3, mb) for mb in (2, 8, 32)]
    assert sizes[0] < sizes[1] < sizes[2] and all(s % 2 == 0 for s in sizes)
    # a batch of 4 windows needs about 4x the memory per window: smaller side
    assert auto_tile_size(dense, 3, 8, batch_size=4) < sizes[1]
    with pytest.warns(UserWarning, match="memory_mb"):
        assert auto_tile_size(dense, 3, 1e-4) == 2


def test_auto_tile_size_estimate_bounds_real_activations():
    """4x the largest operator output at the chosen size fits the budget, and not by far."""
    from torch.utils._python_dispatch import TorchDispatchMode
    dense = fcnseg.densify(toy_model(), output_stride=1).eval()
    budget_mb = 4
    t = auto_tile_size(dense, 3, budget_mb)
    biggest = []

    class Sizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                biggest.append(out.numel() * out.element_size())
            return out

    P = dense.patch_size[0]
    with torch.no_grad(), Sizes():
        dense.forward_valid(torch.zeros(1, 3, t - 1 + P, t - 1 + P))
    assert 4 * max(biggest) <= budget_mb * 2 ** 20
    assert 4 * max(biggest) > 0.6 * budget_mb * 2 ** 20
