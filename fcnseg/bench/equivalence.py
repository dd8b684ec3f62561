"""The dense network on a device and in a precision against patch-by-patch in float64 on the CPU.

The reference is independent of the device and of the precision under test: a float64 copy of
the classifier, run patch by patch on the CPU (fcnseg.patchwise, fcnseg.crop_patches). The
result says how far the dense network is from it, forward (scores and labels) and backward
(the gradient of a random weighting of the scores, for every parameter and the image):

- fp64: exact (relative error at float64 rounding, EXACT_FP64);
- fp32: IEEE float32 (no TF32), within FP32_TOLERANCE;
- tf32, bf16, fp16: reduced precision, never called exact: label agreement and score error,
  judged on REDUCED_TOLERANCE and REDUCED_MIN_COSINE for the gradients.

tools/gpu_check.py and tests/test_gpu.py run these on CUDA; on a CPU they run unchanged.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch.utils._pytree import tree_leaves

from fcnseg.compare import compare_dense, grid_pixels
from fcnseg.dense import densify
from fcnseg.patch import crop_patches, pixel_index
from fcnseg.runtime.precision import precision_context

EXACT_FP64 = 1e-9          # relative, float64
FP32_TOLERANCE = 1e-4      # relative, IEEE float32
REDUCED_TOLERANCE = 5e-2   # relative score error a reduced precision may show
REDUCED_MIN_COSINE = 0.9   # gradients in a reduced precision: the same direction, not the same bits
MODES = ("fp64", "fp32", "tf32", "bf16")


@dataclass
class Equivalence:
    mode: str
    exact: bool                    # judged on a float64/IEEE-fp32 tolerance (else: reduced precision)
    max_rel: float                 # forward: max |dense - reference| / max |reference|
    label_agreement: float         # forward: share of compared pixels whose argmax agrees (first output)
    pixels: int
    grad_max_rel: float | None     # backward: the largest relative error over parameters and image
    grad_min_cosine: float | None  # backward: the smallest cosine similarity over them
    ok: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _leaves(out):
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def check_equivalence(model, x, mode: str, device, *, patch_size=None, output_stride: int = 1,
                      pixels=None, gradients: bool = True) -> Equivalence:
    """``model`` (any dtype, eval mode) densified on ``device`` in ``mode`` (MODES) against its
    float64 CPU copy patch by patch on the images ``x`` (N, C, H, W), at ``pixels`` of the output
    grid (None: all)."""
    device = torch.device(device)
    dtype = torch.float64 if mode == "fp64" else torch.float32
    precision = "fp32" if mode == "fp64" else mode
    reference = copy.deepcopy(model).double().cpu().eval()
    net = copy.deepcopy(model).to(device, dtype).eval()
    patch = patch_size or getattr(model, "patch_size", None)
    dense = densify(net, patch, output_stride=output_stride, precision=precision)
    n, _, h, w = x.shape
    s = output_stride
    idx = pixel_index(grid_pixels(h, w, s) if pixels is None else pixels, h, w)
    xd = x.to(device, dtype)
    with torch.no_grad():
        out = dense(xd)
    got = [t[:, :, idx[:, 0] // s, idx[:, 1] // s].double().cpu() for t in _leaves(out)]
    x64 = x.double().cpu()
    with precision_context("fp32", "cpu"):
        cmp = compare_dense(dense, reference, x64, idx, dense_scores=got if len(got) > 1 else got[0],
                                   patch_size=dense.patch_size)
    grad_rel = grad_cos = None
    if gradients:
        grad_rel, grad_cos = _gradient_errors(reference, net, dense, x64, xd, idx, s)
    exact = mode in ("fp64", "fp32")
    if exact:
        tol = EXACT_FP64 if mode == "fp64" else FP32_TOLERANCE
        ok = cmp.max_rel <= tol and (grad_rel is None or grad_rel <= tol)
    else:
        ok = cmp.max_rel <= REDUCED_TOLERANCE and (grad_cos is None or grad_cos >= REDUCED_MIN_COSINE)
    return Equivalence(mode, exact, cmp.max_rel, cmp.label_agreement, cmp.pixels, grad_rel, grad_cos, ok)


def _gradient_errors(reference, net, dense, x64, xd, idx, s):
    """The gradient of sum(weights * scores) at the compared pixels: the dense network on its
    device against the float64 reference patch by patch, for every parameter and the image."""
    torch.manual_seed(0)
    xg = xd.clone().requires_grad_(True)
    net.zero_grad()
    outs = _leaves(dense(xg))
    weights = [torch.randn(t.shape[0], t.shape[1], len(idx), dtype=torch.float64) for t in outs]
    loss = sum((t[:, :, idx[:, 0] // s, idx[:, 1] // s].double() * w.to(t.device)).sum()
               for t, w in zip(outs, weights))
    loss.backward()
    got = [p.grad.double().cpu() if p.grad is not None else torch.zeros(p.shape, dtype=torch.float64)
           for p in net.parameters()] + [xg.grad.double().cpu()]
    xr = x64.clone().requires_grad_(True)
    reference.zero_grad()
    n = xr.shape[0]
    crops = crop_patches(xr, idx, dense.patch_size, pad_mode=dense.pad_mode, pad_value=dense.pad_value)
    ref_outs = _leaves(reference(crops))
    ref_loss = sum((t.reshape(n, len(idx), -1).transpose(1, 2) * w).sum() for t, w in zip(ref_outs, weights))
    ref_loss.backward()
    want = [p.grad if p.grad is not None else torch.zeros(p.shape, dtype=torch.float64)
            for p in reference.parameters()] + [xr.grad]
    worst_rel, worst_cos = 0.0, 1.0
    for a, b in zip(got, want):
        scale = b.abs().max().item()
        if scale == 0.0:
            continue
        worst_rel = max(worst_rel, (a - b).abs().max().item() / scale)
        worst_cos = min(worst_cos, torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item())
    return worst_rel, worst_cos
