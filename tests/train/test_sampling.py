import torch

from fcnseg.train.sampling import gather_targets, training_pixels


def _mask():
    m = torch.zeros(2, 12, 10, dtype=torch.long)
    m[:, 3:5, 3:5] = 1  # 4 rare pixels per image
    m[:, 0] = 255
    return m


def test_all_labelled_pixels_without_sampling():
    m = _mask()
    px = training_pixels(m)
    assert [len(p) for p in px] == [110, 110]
    assert (gather_targets(m, px) != 255).all()


def test_fraction_and_stride_grid():
    m = _mask()
    px = training_pixels(m, 0.5, generator=torch.Generator().manual_seed(0))
    assert [len(p) for p in px] == [55, 55]
    assert len(torch.unique(px[0], dim=0)) == 55  # no pixel twice
    grid = training_pixels(m, stride=3)
    assert all(((p % 3) == 0).all() for p in grid)
    assert len(grid[0]) == 3 * 4  # rows 3, 6, 9 (row 0 ignored) x columns 0, 3, 6, 9


def test_balancing_favours_rare_classes():
    m = _mask()
    g = torch.Generator().manual_seed(1)
    rare_plain = sum((gather_targets(m, training_pixels(m, 0.1, generator=g)) == 1).sum().item()
                     for _ in range(20))
    rare_bal = sum((gather_targets(m, training_pixels(m, 0.1, balance=True, generator=g)) == 1)
                   .sum().item() for _ in range(20))
    # 4 of 110 pixels: ~0.4 per draw of 11 plainly, ~4 (all of them, capped) when balanced
    assert rare_bal > 4 * rare_plain and rare_bal >= 60


def test_draws_above_the_multinomial_cap_follow_the_same_rule(monkeypatch):
    """Pixel sets larger than torch.multinomial's 2^24 categories are drawn by random keys: k
    distinct pixels, heavier ones first (checked with the cap lowered, on the CPU)."""
    from fcnseg.train import sampling
    monkeypatch.setattr(sampling, "MULTINOMIAL_MAX", 8)
    weight = torch.ones(50, dtype=torch.double)
    weight[7] = 1e6
    g = torch.Generator().manual_seed(0)
    hits = 0
    for _ in range(20):
        pick = sampling.draw_without_replacement(weight, 5, g)
        assert len(pick) == 5 and len(set(pick.tolist())) == 5 and pick.max() < 50
        hits += int(7 in pick.tolist())
    assert hits == 20
    uniform = torch.cat([sampling.draw_without_replacement(torch.ones(50, dtype=torch.double), 10, g)
                         for _ in range(200)])
    counts = torch.bincount(uniform, minlength=50)
    assert counts.min() > 10 and counts.max() < 80            # every pixel drawn, none favoured (mean 40)
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    assert len(sampling.training_pixels(mask, 0.5, generator=g)[0]) == 32
