"""The options of the optimising rewrite (`fcnseg.densify(..., optimize=Optimizations(...))`)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Mapping

import torch


@dataclass(frozen=True)
class Optimizations:
    """Which exact speed rewrites `fcnseg.densify(..., optimize=...)` applies.

    channels_last: run every map in NHWC (the big CPU win for pooled networks; on CUDA it
        enables the tensor-core NHWC kernels).
    fold_batchnorm: merge each eval-mode BatchNorm2d into the convolution before it
        (recomputed at every call from the live parameters, so training through it stays exact).
    compile: torch.compile the body (the first call compiles, for seconds to minutes; every new
        input shape recompiles unless compile_options enable dynamic shapes).
    threads: intra-op threads during the forward pass (None: PyTorch's current setting).
    compile_options: keyword arguments for torch.compile.
    reuse_memory: on CPU with glibc, serve the forward pass's maps from the malloc heap so that a
        freed map's pages are reused by the next one instead of fresh zeroed pages
        (`fcnseg.runtime.reuse_freed_memory`); values are untouched. Inference passes only
        (autograd off): a training forward keeps its maps for the backward pass, so a heap
        trimmed on leaving the forward would be refilled with fresh pages by the backward,
        which made a training step slower (docs/benchmarks.md). Training instead runs all its
        steps, forward and backward, inside one block (fcnseg.train does).
    """
    channels_last: bool = True
    fold_batchnorm: bool = True
    compile: bool = False
    threads: int | None = None
    compile_options: Mapping | None = None
    reuse_memory: bool = True

    def __post_init__(self):
        if self.threads is not None and (isinstance(self.threads, bool) or int(self.threads) < 1):
            raise ValueError(f"Optimizations(threads=...) must be a positive count or None, got {self.threads!r}")

    @classmethod
    def resolve(cls, optimize: "bool | Optimizations") -> "Optimizations | None":
        """densify's `optimize` argument -> the options (None: the plain graph)."""
        if isinstance(optimize, cls):
            return optimize
        if optimize is True:
            return cls()
        if optimize is False or optimize is None:
            return None
        raise TypeError(f"optimize must be True, False or fcnseg.Optimizations(...), got {optimize!r}")


@contextlib.contextmanager
def num_threads(n: int | None):
    """Run with n intra-op threads, restoring the previous setting (None: leave it alone)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
