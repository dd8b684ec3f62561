"""Scores of the sampled pixels, computed densely or patch by patch.

dense: one pass of the densified network over the whole batch; the per-pixel scores
are gathered at the sampled pixels, so backpropagation scatters the loss gradient into
an error map that is zero elsewhere (cost independent of the number of pixels).
patch: the classic baseline; one patch per sampled pixel through the classifier.
Both return (M, K) scores in the same image-major order as sampling.gather_targets.
"""
import torch

import fcnseg


def sampled_logits(mode, net, images, pixels, *, patch_size=None, pad_mode="constant",
                   pad_value=0.0, stride=1):
    """images (N, C, H, W); pixels: N tensors (M_n, 2). net: the dense network (dense
    mode, output (N, K, ceil(H/stride), ceil(W/stride))) or the classifier (patch mode)."""
    if mode == "dense":
        out = net(images)  # (N, K, H', W')
        return torch.cat([out[n, :, p[:, 0] // stride, p[:, 1] // stride].t()
                          for n, p in enumerate(pixels)])  # (M, K)
    if mode == "patch":
        patches = torch.cat([fcnseg.crop_patches(images[n:n + 1], p, patch_size,
                                                 pad_mode=pad_mode, pad_value=pad_value)
                             for n, p in enumerate(pixels)])  # (M, C, P, Q)
        return net(patches).flatten(1)  # (M, K) from (M, K) or (M, K, 1, 1)
    raise ValueError(f"trainer.mode must be 'dense' or 'patch', got {mode!r}")
