"""One training step's forward and backward, densely or patch by patch.

dense: one pass of the densified network over the whole batch; the per-pixel scores
are gathered at the sampled pixels, so backpropagation scatters the loss gradient into
an error map that is zero elsewhere (cost independent of the number of pixels).
patch: the classic baseline; one patch per sampled pixel through the classifier, in
micro-batches of at most `chunk` patches so memory stays bounded whatever the number
of pixels. Both produce (M, K) scores in the same image-major order as
sampling.gather_targets, so the loss, and the gradient, are the same.
"""
import contextlib

import torch

from fcnseg.ops import pad_image
from fcnseg.patch import crop_patches


def dense_logits(net, images, pixels, stride=1):
    """images (N, C, H, W) through the dense net (output (N, K, ceil(H/s), ceil(W/s))),
    scores at the N pixel sets (M_n, 2) -> (M, K)."""
    out = net(images)  # (N, K, H', W')
    return torch.cat([out[n, :, p[:, 0] // stride, p[:, 1] // stride].t()
                      for n, p in enumerate(pixels)])  # (M, K)


def full_precision(x):
    """Scores under autocast (fp16/bf16) in float32 for the loss; float32/64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _patch_chunks(pixels, chunk):
    """(image index, pixel rows) of at most `chunk` patches each, image-major."""
    for n, p in enumerate(pixels):
        for a in range(0, len(p), chunk):
            yield n, p[a:a + chunk]


class _Cropper:
    """Patches of image n around pixels p; each image padded once, not once per chunk."""

    def __init__(self, images, patch_size, pad_mode, pad_value):
        self.images, self.patch_size = images, patch_size
        self.pad_mode, self.pad_value, self.padded = pad_mode, pad_value, {}

    def __call__(self, n, p):
        if n not in self.padded:
            self.padded = {n: pad_image(self.images[n:n + 1], self.patch_size, self.pad_mode,
                                        self.pad_value)}
        return crop_patches(self.images[n:n + 1], p, self.patch_size,
                                   padded=self.padded[n])  # (m, C, P, Q)


def patch_logits(net, images, pixels, patch_size, *, pad_mode="constant", pad_value=0.0,
                 chunk=None):
    """Scores of one patch per sampled pixel through the classifier `net` -> (M, K),
    cropped and classified `chunk` patches at a time (None: all at once)."""
    chunk = chunk or max(1, sum(len(p) for p in pixels))
    crop = _Cropper(images, patch_size, pad_mode, pad_value)
    return torch.cat([net(crop(n, p)).flatten(1)  # (m, K) from (m, K) or (m, K, 1, 1)
                      for n, p in _patch_chunks(pixels, chunk)])


def patch_backward(net, images, pixels, patch_size, loss_of_logits, *, pad_mode="constant",
                   pad_value=0.0, chunk, autocast=None):
    """Loss and gradient of a patch step with bounded memory -> the loss (a 0-dim tensor,
    detached). `loss_of_logits` maps (M, K) float scores to the (scaled) scalar whose
    gradient is wanted (scores in float32 at least).

    Any loss (Dice and Lovasz do not split into a sum over pixels) gets the exact
    gradient in two passes: the scores of all patches without a graph, the gradient of
    the loss with respect to those scores, then each micro-batch again with its graph,
    back-propagating its slice of that gradient; parameter gradients accumulate to those
    of one pass over all patches. The RNG state is replayed so dropout draws the same
    masks in both passes. One micro-batch needs only one pass.
    """
    ctx = autocast or contextlib.nullcontext
    groups = list(_patch_chunks(pixels, chunk))
    crop = _Cropper(images, patch_size, pad_mode, pad_value)
    if len(groups) == 1:
        with ctx():
            logits = net(crop(*groups[0])).flatten(1)
        loss = loss_of_logits(full_precision(logits))
        loss.backward()
        return loss.detach()
    states, outs = [], []
    with torch.no_grad():
        for n, p in groups:
            states.append(torch.random.get_rng_state())
            with ctx():
                outs.append(full_precision(net(crop(n, p)).flatten(1)))
    logits = torch.cat(outs).requires_grad_(True)  # (M, K), a leaf
    loss = loss_of_logits(logits)
    (grad,) = torch.autograd.grad(loss, logits)
    # under DistributedDataParallel only the last backward all-reduces the accumulated
    # gradients (each would otherwise average the sum so far across ranks)
    no_sync = getattr(net, "no_sync", None)
    a = 0
    for k, ((n, p), state) in enumerate(zip(groups, states)):
        torch.random.set_rng_state(state)
        last = k == len(groups) - 1
        with no_sync() if no_sync is not None and not last else contextlib.nullcontext():
            with ctx():
                out = net(crop(n, p)).flatten(1)
            out.backward(grad[a:a + len(p)].to(out.dtype))
        a += len(p)
    return loss.detach()
