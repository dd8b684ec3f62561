"""The mixed-precision rule training and inference share."""
from __future__ import annotations

import contextlib

import torch

def amp_dtype(device: torch.device | str, enabled: bool | str = "auto") -> torch.dtype | None:
    """The one mixed-precision rule: on CUDA bfloat16 where the GPU supports it, else
    float16 (training then scales the loss, see grad_scaler); None (full precision) on
    the CPU, where autocast is slower here and buys nothing. enabled: "auto" or True
    mean that rule, False means full precision everywhere."""
    device = torch.device(device)
    if enabled not in ("auto", True, False):
        raise ValueError(f"amp must be auto, true or false, got {enabled!r}")
    if enabled is False or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def grad_scaler(device: torch.device | str, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling for float16 only (bfloat16 has float32's range); a disabled scaler
    is a no-op with the same interface and state_dict."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """torch.autocast for ``dtype``; a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
