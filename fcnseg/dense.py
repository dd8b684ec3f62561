"""`densify`: one pass over a whole image gives the classifier's output at every pixel."""
from __future__ import annotations

from dataclasses import fields

import torch
import torch.fx
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from . import ops
from .convert.dense_graph import convert
from .convert.errors import ConversionError, OutputStrideError, PatchSizeError
from .convert.optimize import Optimizations, num_threads, optimize_body
from .convert.trace import infer_in_channels, patch_values, trace
from .geometry import Geometry, build_geometry
from .ops import PAD_MODES, as_pair, pad_image
from .patch import resolve_patch_size
from .runtime import reuse_freed_memory
from .runtime.precision import precision_context
from .settings import check_precision


class DenseClassifier(nn.Module):
    """The dense network of a patch classifier: scores at every pixel of a whole image in one pass.

    Built by `fcnseg.densify`. It reads the classifier's own parameter tensors (a step on it
    is a step on the classifier) and follows the classifier's train/eval mode. `body` is the
    converted fx graph, rewritten for speed unless densify was called with optimize=False
    (`optimizations` says which rewrites were applied; None: the plain graph).
    """

    def __init__(self, classifier, body, patch_size, output_stride, pad_mode, pad_value, geometry, unsafe,
                 num_classes, per_patch_tail=None, tail_inputs=(), optimizations=None, precision=None):
        super().__init__()
        self.per_patch_tail = per_patch_tail  # layers after a squeeze-excitation gate, run per patch; or None
        self.tail_inputs = list(tail_inputs)  # Geo of each dense map the per-patch tail gathers from
        self.tail_memory = 256 * 2**20        # bytes of gathered features per tail batch
        self.classifier = classifier          # registered: .parameters(), .train() and .eval() reach it
        self.body = body
        self.patch_size = patch_size
        self.output_stride = output_stride
        self.pad_mode, self.pad_value = pad_mode, pad_value
        self.geometry = geometry
        self.num_classes = num_classes
        self.optimizations = optimizations
        self.precision = precision            # None: the caller's own autocast and float32 flags
        self._unsafe = unsafe
        # adopt the classifier's mode without changing it (a later .train()/.eval() reaches both)
        for m in (self, body, per_patch_tail):
            if m is not None:
                m.training = classifier.training

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return pad_image(x, self.patch_size, self.pad_mode, self.pad_value)

    def _check(self, x):
        if x.dim() != 4 or x.shape[1] != self.geometry.in_channels:
            raise ValueError(f"expected images (N, {self.geometry.in_channels}, H, W), got shape {tuple(x.shape)}")
        for name, m in self._unsafe:
            uses_batch = m.training and not isinstance(m, nn.Dropout) or \
                (isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats)
            if uses_batch:
                raise ConversionError(
                    f"layer '{name}' ({type(m).__name__}) is in training mode: its statistics/masks are shared "
                    "across all positions of the image, which no single patch sees. Call "
                    "fcnseg.freeze_batchnorm(model) (or put the layer in eval mode) before training densely")

    def forward_valid(self, xp: torch.Tensor):
        """Scores (N, K, floor((Hp-P)/s)+1, floor((Wp-Q)/s)+1) for an already padded input.

        A classifier with several outputs (a tuple, list or dict of per-patch tensors) gives
        the same structure of score maps.
        """
        self._check(xp)
        p, q = self.patch_size
        s = self.output_stride
        if xp.shape[-2] < p or xp.shape[-1] < q:
            raise ValueError(f"padded input {tuple(xp.shape[-2:])} is smaller than the patch {self.patch_size}")
        ho, wo = (xp.shape[-2] - p) // s[0] + 1, (xp.shape[-1] - q) // s[1] + 1
        opt = self.optimizations
        with num_threads(opt.threads if opt else None), \
                reuse_freed_memory(bool(opt and opt.reuse_memory) and xp.device.type == "cpu"
                                   and not torch.is_grad_enabled()), \
                precision_context(self.precision, xp.device):
            y = self.body(xp)
            if self.per_patch_tail is not None:
                y = self._run_tail(y, ho, wo)
        if self.per_patch_tail is None:
            # networks that ignore trailing rows (floor pooling) produce a few extra outputs: drop
            # them; the result is NCHW-contiguous whatever layout the body ran in
            y = tree_map(lambda t: t[..., :ho, :wo].contiguous(), y)
        if self.precision is not None:      # scores in the input's dtype, whatever autocast computed in
            y = tree_map(lambda t: t.to(xp.dtype) if t.is_floating_point() else t, y)
        return y

    def _run_tail(self, maps, ho, wo):
        """Gather each output pixel's features from the dense maps and finish it per patch."""
        n, s = maps[0].shape[0], self.output_stride
        # advanced indexing is several times slower on strided or NHWC maps: one copy each is cheaper
        maps = [t.contiguous() for t in maps]
        m = torch.arange(ho * wo, device=maps[0].device)
        per_pixel = sum(t.shape[1] * g.hw[0] * g.hw[1] for t, g in zip(maps, self.tail_inputs)) * n
        batch = max(1, self.tail_memory // (per_pixel * maps[0].element_size()))
        chunks, spec = [], None
        for chunk in m.split(batch):
            my, mx = chunk // wo, chunk % wo
            feats = []
            for t, geo in zip(maps, self.tail_inputs):
                # the (*) invariant of docs/algorithm.md: feature (a, b) of pixel (my*s, mx*s) is at
                # dense[my*s/g + a*r, mx*s/g + b*r]
                iy, ix = my * (s[0] // geo.g[0]), mx * (s[1] // geo.g[1])
                f = ops.gather_patches(t, iy, ix, geo.hw, geo.r)
                feats.append(f.reshape(f.shape[0], -1) if geo.kind == "flat" else f)
            leaves, spec = tree_flatten(self.per_patch_tail(*feats))
            chunks.append([scores.reshape(n, len(chunk), -1) for scores in leaves])     # (N, M, K) each
        maps_out = [torch.cat(parts, 1).transpose(1, 2).reshape(n, -1, ho, wo).contiguous() for parts in zip(*chunks)]
        return tree_unflatten(maps_out, spec)

    def forward(self, x: torch.Tensor):
        self._check(x)
        return self.forward_valid(self.pad(x))

    def extra_repr(self):
        opt = self.optimizations
        return (f"patch_size={self.patch_size}, output_stride={self.output_stride}, pad_mode={self.pad_mode!r}, "
                f"num_classes={self.num_classes}, optimizations={opt if opt is None else _describe(opt)}")


def _describe(opt: Optimizations) -> str:
    return "(" + ", ".join(f"{f.name}={getattr(opt, f.name)}" for f in fields(opt)) + ")"


def _build(gm, values, patch_size, s):
    conv = convert(gm, values, patch_size, s)
    body = torch.fx.GraphModule(conv.attrs, conv.graph, class_name="DenseBody")
    body.graph.eliminate_dead_code()
    body.recompile()
    tail = None if conv.per_patch_tail is None else \
        torch.fx.GraphModule(conv.attrs, conv.per_patch_tail, class_name="PerPatchTail")
    return conv, body, tail


def valid_output_strides(gm, values, patch_size) -> list[int]:
    total = max(convert(gm, values, patch_size, (1, 1)).out_geo.d)
    out = []
    for s in range(1, total + 1):
        try:
            convert(gm, values, patch_size, (s, s))
            out.append(s)
        except OutputStrideError:
            pass
    return out


def densify(model: nn.Module, patch_size=None, *, output_stride=1, pad_mode: str = "constant",
            pad_value: float = 0.0, in_channels: int | None = None,
            optimize: bool | Optimizations = True, precision: str | None = None) -> DenseClassifier:
    """The dense network of a patch classifier: output [n, :, m, k] == model(patch of (m*s, k*s))[n].

    optimize: True (default) applies every exact speed rewrite (channels_last end to end, batch
    norm folded into convolutions, identity windows dropped); False keeps the plain converted
    graph (debugging, or an exporter that refuses the rewrite); `fcnseg.Optimizations(...)`
    chooses (and adds torch.compile or a thread count).

    precision: None (default) runs in the caller's context (its autocast and float32 flags);
    "fp32" (IEEE: no TF32 on CUDA, strict oneDNN), "tf32" (CUDA), "bf16", "fp16" (CUDA) or
    "auto" run every forward in that mode (fcnseg.runtime.precision; auto is resolved per call
    from the input's device) and return scores in the input's dtype.
    """
    options = Optimizations.resolve(optimize)
    if precision is not None:
        check_precision("precision", precision)        # a misspelt name fails here, not at the first call
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    patch_size = resolve_patch_size(model, patch_size)
    s = as_pair(output_stride)
    gm = trace(model)
    c = in_channels or infer_in_channels(gm)
    try:
        values = patch_values(gm, c, patch_size)
    except RuntimeError as exc:
        raise PatchSizeError(f"the classifier does not run on a {patch_size} patch: {exc}".split("\n")[0]) from exc
    try:
        conv, body, tail = _build(gm, values, patch_size, s)
    except OutputStrideError as exc:
        valid = valid_output_strides(gm, values, patch_size)
        raise OutputStrideError(f"{exc}. Valid output strides: {valid}") from None
    except PatchSizeError as exc:
        from .convert.strip import nearby_patch_sizes
        near = nearby_patch_sizes(gm, c, patch_size)
        raise type(exc)(f"{exc}. Patch sizes near {patch_size} that work: {near}") from None
    geo = build_geometry(conv, patch_size, c, s)
    return DenseClassifier(model, optimize_body(body, options), patch_size, s, pad_mode, pad_value, geo,
                           conv.unsafe, conv.num_classes, tail, conv.tail_inputs, options, precision)


def geometry_of(model: nn.Module, patch_size=None, *, in_channels: int | None = None, output_stride=1) -> Geometry:
    """Receptive field, strides, FLOPs of one patch and dense FLOPs per pixel (docs/algorithm.md, "Cost model")."""
    return densify(model, patch_size, in_channels=in_channels, output_stride=output_stride,
                   optimize=False).geometry


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Put every batch-norm layer in eval mode (running statistics), keeping the rest as it is."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model
