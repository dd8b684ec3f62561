"""Which pixels a training step learns from.

Both training modes draw the same pixel sets from this module, so dense and patch
steps are the same optimisation (docs/algorithm.md, "Backward propagation and training"). A pixel set per image is a
(M, 2) long tensor of (i, j).
"""
import torch

# torch.multinomial refuses more categories than this; larger pixel sets are drawn by keys
MULTINOMIAL_MAX = 2 ** 24


def draw_without_replacement(weight, k, generator=None):
    """k distinct indices of the CPU tensor ``weight`` (L,), index i drawn with probability
    proportional to weight[i] at each successive draw (torch.multinomial's rule). Up to
    MULTINOMIAL_MAX categories this is torch.multinomial itself; above, the same distribution
    by random keys (Efraimidis and Spirakis: the k largest u ** (1 / w), u uniform)."""
    if len(weight) <= MULTINOMIAL_MAX:
        return torch.multinomial(weight, k, replacement=False, generator=generator)
    u = torch.rand(len(weight), dtype=torch.float64, generator=generator)
    return torch.topk(u.log() / weight, k).indices


def training_pixels(mask, fraction=1.0, balance=False, stride=1, ignore_index=255,
                  generator=None):
    """mask (N, H, W) long -> list of N tensors (M_n, 2) of labelled pixels.

    fraction < 1 keeps round(fraction * labelled) pixels per image, drawn without
    replacement; balance=True draws them with probability 1 / (pixels of that class in
    the image), so rare classes are seen as often as frequent ones. stride s > 1 keeps
    only pixels on the (s*m, s*n) grid, the pixels a dense pass at output stride s
    computes. The draw uses ``generator`` (a CPU generator) whatever the mask's device, so a
    run picks the same pixels on a CPU and on a GPU; only the labels of a balanced draw cross
    to the host, once per image.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"trainer.sample_fraction must be in (0, 1], got {fraction}")
    n, h, w = mask.shape
    grid = torch.zeros(h, w, dtype=torch.bool, device=mask.device)
    grid[::stride, ::stride] = True
    out = []
    for m in mask:
        keep = (m != ignore_index) & grid
        idx = keep.nonzero()  # (L, 2)
        if fraction < 1.0 and len(idx):
            k = max(1, int(round(fraction * len(idx))))
            if balance:
                labels = m[idx[:, 0], idx[:, 1]]
                counts = torch.bincount(labels)
                weight = (1.0 / counts[labels].double()).cpu()
            else:
                weight = torch.ones(len(idx), dtype=torch.double)
            pick = draw_without_replacement(weight, k, generator)
            idx = idx[pick.to(idx.device).sort().values]
        out.append(idx)
    return out


def gather_targets(mask, pixels):
    """(N, H, W) mask and N pixel sets -> (sum M_n,) labels in image-major order."""
    return torch.cat([m[p[:, 0], p[:, 1]] for m, p in zip(mask, pixels)])
