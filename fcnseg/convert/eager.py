"""When a kernel of the optimised graph may take a CPU fast path.

The fast paths (gathered and fused convolutions, index-free max pooling) are for eager inference:
tracers, exporters and torch.compile see the plain operations, and with autograd recording the
plain operations (or their own backward) run.
"""
from __future__ import annotations

import torch

from ..ops import as_pair


def records_grad(*tensors) -> bool:
    """Autograd records an operation on these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def captured() -> bool:
    """Traced, exported or compiled."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def plain_cpu_window(x, stride, padding) -> bool:
    """A stride-1 unpadded window on CPU, run eagerly (not traced, exported or compiled)."""
    return as_pair(stride) == (1, 1) and as_pair(padding) == (0, 0) and x.device.type == "cpu" and not captured()
