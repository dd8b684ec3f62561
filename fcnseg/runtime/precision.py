"""The precision rule every front end shares: training, inference, verify, the benchmark.

One setting, ``precision``, with the same values everywhere (fcnseg.settings.PRECISIONS):

- ``fp32``: IEEE float32 on every device. TF32 is off for CUDA matrix products and cuDNN
  convolutions (PyTorch's default lets cuDNN convolutions use TF32), and oneDNN's float32
  math is strict (no implicit bf16/TF32 down-conversion);
- ``tf32``: float32 tensors, TF32 tensor-core math for matmul and convolutions (CUDA only);
- ``bf16``: autocast to bfloat16 (float32 weights, float32 accumulation; no loss scaling,
  bfloat16 has float32's range);
- ``fp16``: autocast to float16 (CUDA only; training scales the loss, see grad_scaler);
- ``auto``: bf16 where the hardware runs it natively -- a CUDA GPU that supports it, or a CPU
  with AVX512-BF16 or AMX (probed, see cpu_native_bf16) -- fp16 on a CUDA GPU without bf16,
  fp32 everywhere else. On a CPU without native bf16, oneDNN emulates it and bf16 is slower
  than fp32, so auto never picks it there.

    p = resolve_precision("auto", device)          # a Precision: name, autocast dtype
    with precision_context(p, device):             # flags set, autocast entered; both restored
        scores = dense(x)

Equivalence checks compare in IEEE fp32 or float64 (``precision_context("fp32")``) and report a
reduced precision as label agreement and score error, never as exact (`Precision.exact`).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from fcnseg.settings import PRECISIONS

CUDA_ONLY = {"tf32": "TF32 is a CUDA tensor-core mode", "fp16": "float16 autocast is a CUDA mode here"}
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved precision (never ``auto``): its name and what it does on its device."""
    name: str                      # fp32 | tf32 | bf16 | fp16
    device_type: str               # cpu | cuda | ...
    requested: str = ""            # what the setting said (auto, or the name itself)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _AUTOCAST.get(self.name)

    @property
    def exact(self) -> bool:
        """IEEE float32 (or the tensors' own float64): results comparable bit-for-bit-close to a
        float64 reference; anything else is compared by labels and score error."""
        return self.name == "fp32"

    @property
    def scales_loss(self) -> bool:
        return self.name == "fp16"

    def describe(self) -> str:
        how = f" (from {self.requested})" if self.requested and self.requested != self.name else ""
        return f"{self.name}{how} on {self.device_type}"


@functools.lru_cache(maxsize=1)
def cpu_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16), so oneDNN's bf16
    kernels are faster than float32 ones. Both oneDNN's own check and the CPU flags must agree:
    either alone has been seen to report a bf16 path that is emulated."""
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn = False
    return onednn and bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (an empty set where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(name: str | Precision, device: torch.device | str) -> Precision:
    """The precision a setting names, on ``device``; ``auto`` follows the rule above.

    A mode the device cannot run is an error that names the setting's fix, never a silent
    fall-back (a benchmark row or a check would otherwise be labelled with the wrong mode)."""
    device = torch.device(device)
    if isinstance(name, Precision):
        return name
    if isinstance(name, bool):          # the old amp=true|false form: the rule, or IEEE fp32
        name = "auto" if name else "fp32"
    name = str(name)
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    cuda = device.type == "cuda"
    if name == "auto":
        if cuda:
            chosen = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            chosen = "bf16" if device.type == "cpu" and cpu_native_bf16() else "fp32"
        return Precision(chosen, device.type, "auto")
    if name in CUDA_ONLY and not cuda:
        raise ValueError(f"precision={name}: {CUDA_ONLY[name]}, but the device is {device}; use "
                         f"precision=fp32 (IEEE) or bf16 on this device, or auto")
    if name == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision=bf16: the GPU {torch.cuda.get_device_name(device)} does not support "
                         f"bfloat16; use precision=fp16 or auto")
    return Precision(name, device.type, name)


# ---- the float32 math flags ---------------------------------------------------------------------
# torch >= 2.9 spells them backend by backend (`fp32_precision` = "ieee" | "tf32" | ...) and
# refuses to mix that with the legacy allow_tf32 flags, so only one of the two is ever touched.

REPORTED = ("cuda.matmul", "cudnn.conv", "mkldnn.matmul", "mkldnn.conv")


def _new_api_leaves() -> dict:
    """The float32-math switches of matrix products and convolutions in the new API; {} on a
    torch without it. While they differ from PyTorch's defaults, PyTorch refuses to read the
    legacy `torch.backends.cudnn.allow_tf32` (it sees mixed APIs): read float32_math_state."""
    b = torch.backends
    leaves = {key: getattr(getattr(b, key.split(".")[0]), key.split(".")[1], None) for key in REPORTED}
    if any(v is None or not hasattr(v, "fp32_precision") for v in leaves.values()):
        return {}
    return leaves


def float32_math_state() -> dict:
    """How float32 matrix products and convolutions are computed right now, per backend, plus
    ``tf32``: whether any CUDA float32 path may use TF32. Recorded in every results file."""
    leaves = _new_api_leaves()
    if leaves:
        state = {k: _effective(k) for k in REPORTED}
        state["tf32"] = "tf32" in (state["cuda.matmul"], state["cudnn.conv"])
        return state
    matmul = torch.backends.cuda.matmul.allow_tf32
    conv = torch.backends.cudnn.allow_tf32
    return {"cuda.matmul": "tf32" if matmul else "ieee", "cudnn.conv": "tf32" if conv else "ieee",
            "float32_matmul_precision": torch.get_float32_matmul_precision(), "tf32": bool(matmul or conv)}


def _effective(key: str) -> str:
    """A backend's float32 mode with "none" resolved through its parents (backend, then global)
    down to PyTorch's defaults: IEEE for CUDA matmul and oneDNN, TF32 for cuDNN convolutions."""
    backend, op = key.split(".")
    b = torch.backends
    module = getattr(b, backend)
    for value in (getattr(module, op).fp32_precision, getattr(module, "fp32_precision", "none"),
                  getattr(b, "fp32_precision", "none")):
        if value != "none":
            return str(value)
    return "tf32" if key == "cudnn.conv" else "ieee"


def _set_float32_math(mode: str) -> None:
    """mode: "ieee" everywhere, or "tf32" for the CUDA backends (oneDNN stays strict)."""
    leaves = _new_api_leaves()
    if leaves:
        for key, leaf in leaves.items():
            leaf.fp32_precision = mode if key.startswith("cu") else "ieee"
        return
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
    torch.set_float32_matmul_precision("high" if mode == "tf32" else "highest")


def _saved_float32_math():
    leaves = _new_api_leaves()
    if leaves:
        saved = {k: v.fp32_precision for k, v in leaves.items()}

        def restore():
            for k, v in saved.items():
                leaves[k].fp32_precision = v
        return restore
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())

    def restore_legacy():
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])
    return restore_legacy


@contextlib.contextmanager
def float32_math(precision: Precision):
    """The float32 math flags of ``precision`` (IEEE, or TF32 for tf32) for the block, without
    autocast: a training run holds this around all its steps and enters autocast only around
    the forward passes; restored on exit."""
    restore = _saved_float32_math()
    try:
        _set_float32_math("tf32" if precision.name == "tf32" else "ieee")
        yield precision
    finally:
        restore()


@contextlib.contextmanager
def precision_context(precision: str | Precision | None, device: torch.device | str | None = None):
    """Run the block in ``precision`` on ``device``: the float32 math flags set (IEEE, or TF32
    for tf32) and, for bf16/fp16, autocast entered; everything restored on exit, so contexts
    nest. None: a no-op (the caller's own settings stand). Yields the resolved Precision."""
    if precision is None:
        yield None
        return
    device = torch.device(device if device is not None else
                          (precision.device_type if isinstance(precision, Precision) else "cpu"))
    p = resolve_precision(precision, device)
    # fp32/tf32 switch an enclosing autocast off: the block runs in the precision it names
    with float32_math(p), torch.autocast(device.type, dtype=p.autocast_dtype,
                                         enabled=p.autocast_dtype is not None):
        yield p


def amp_dtype(device: torch.device | str, enabled: bool | str = "auto") -> torch.dtype | None:
    """The autocast dtype of a precision setting on ``device`` (None: float32). Also takes the
    old boolean form: True means auto, False means fp32."""
    return resolve_precision(enabled, device).autocast_dtype


def grad_scaler(device: torch.device | str, dtype: torch.dtype | Precision | None) -> torch.amp.GradScaler:
    """Loss scaling for float16 only (bfloat16 has float32's range); a disabled scaler
    is a no-op with the same interface and state_dict."""
    device = torch.device(device)
    if isinstance(dtype, Precision):
        dtype = dtype.autocast_dtype
    return torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """torch.autocast for ``dtype``; a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
