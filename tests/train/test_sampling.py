import torch

from fcnseg.train.sampling import gather_targets, sample_pixels


def _mask():
    m = torch.zeros(2, 12, 10, dtype=torch.long)
    m[:, 3:5, 3:5] = 1  # 4 rare pixels per image
    m[:, 0] = 255
    return m


def test_all_labelled_pixels_without_sampling():
    m = _mask()
    px = sample_pixels(m)
    assert [len(p) for p in px] == [110, 110]
    assert (gather_targets(m, px) != 255).all()


def test_fraction_and_stride_grid():
    m = _mask()
    px = sample_pixels(m, 0.5, generator=torch.Generator().manual_seed(0))
    assert [len(p) for p in px] == [55, 55]
    assert len(torch.unique(px[0], dim=0)) == 55  # no pixel twice
    grid = sample_pixels(m, stride=3)
    assert all(((p % 3) == 0).all() for p in grid)
    assert len(grid[0]) == 3 * 4  # rows 3, 6, 9 (row 0 ignored) x columns 0, 3, 6, 9


def test_balancing_favours_rare_classes():
    m = _mask()
    g = torch.Generator().manual_seed(1)
    rare_plain = sum((gather_targets(m, sample_pixels(m, 0.1, generator=g)) == 1).sum().item()
                     for _ in range(20))
    rare_bal = sum((gather_targets(m, sample_pixels(m, 0.1, balance=True, generator=g)) == 1)
                   .sum().item() for _ in range(20))
    # 4 of 110 pixels: ~0.4 per draw of 11 plainly, ~4 (all of them, capped) when balanced
    assert rare_bal > 4 * rare_plain and rare_bal >= 60
