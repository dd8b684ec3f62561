"""Which pixels a training step learns from.

Both training modes draw the same pixel sets from this module, so dense and patch
steps are the same optimisation (docs/algorithm.md, "Backward propagation and training"). A pixel set per image is a
(M, 2) long tensor of (i, j).
"""
import torch


def sample_pixels(mask, fraction=1.0, balance=False, stride=1, ignore_index=255,
                  generator=None):
    """mask (N, H, W) long -> list of N tensors (M_n, 2) of labelled pixels.

    fraction < 1 keeps round(fraction * labelled) pixels per image, drawn without
    replacement; balance=True draws them with probability 1 / (pixels of that class in
    the image), so rare classes are seen as often as frequent ones. stride s > 1 keeps
    only pixels on the (s*m, s*n) grid, the pixels a dense pass at output stride s
    computes.
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
                weight = 1.0 / counts[labels].double()
            else:
                weight = torch.ones(len(idx), dtype=torch.double, device=mask.device)
            pick = torch.multinomial(weight.cpu(), k, replacement=False, generator=generator)
            idx = idx[pick.to(idx.device).sort().values]
        out.append(idx)
    return out


def gather_targets(mask, pixels):
    """(N, H, W) mask and N pixel sets -> (sum M_n,) labels in image-major order."""
    return torch.cat([m[p[:, 0], p[:, 1]] for m, p in zip(mask, pixels)])
