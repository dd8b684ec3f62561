"""What one training step will cost, known before the first step runs.

The step is traced once with fake tensors (torch's FakeTensorMode: shapes and dtypes,
no data, no arithmetic), forward and backward, counting FLOPs (torch's FlopCounterMode)
and the bytes autograd keeps for the backward pass (saved-tensor hooks): the
activation memory of the step. Parameters, gradients and optimiser moments add their
own bytes. Time is FLOPs over this device's measured rate on a convolution of the kind
the dense networks run (a one-off probe of a few tens of milliseconds); the first real
step is then compared with the estimate in the log.

`check_training_step` holds a run to its memory limit before the first step: it estimates
the step of the run's settings and, when that does not fit, searches the settings that
would (a smaller batch, a larger output stride, a narrower network), cheapest change first.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from fcnseg.checkpoint import build_model, model_spec
from fcnseg.dense import densify, freeze_batchnorm
from fcnseg.train.errors import TrainingError
from fcnseg.train.networks import padding_of

logger = logging.getLogger(__name__)

MIB = 2 ** 20


@dataclass
class StepCost:
    flops: float              # forward + backward of one step
    activation_bytes: int     # kept for the backward pass (the dominant term)
    state_bytes: int          # parameters + gradients + optimiser moments
    rate: float               # FLOP/s measured on this device
    detail: str = ""          # e.g. "8 images of 96x96 at output stride 2"

    @property
    def memory_bytes(self):
        return self.activation_bytes + self.state_bytes

    @property
    def seconds(self):
        return self.flops / self.rate

    def summary(self):
        return (f"step cost ({self.detail}): {self.flops / 1e9:.1f} GFLOP forward+backward, "
                f"{self.activation_bytes / MIB:.0f} MiB activations + {self.state_bytes / MIB:.0f} MiB "
                f"weights/gradients/optimiser state; expected {duration(self.seconds)} per step "
                f"at the measured {self.rate / 1e9:.0f} GFLOP/s")


def duration(s):
    """Seconds as a reader wants them: "0.42 s" or "3.5 min"."""
    return f"{s:.2f} s" if s < 60 else f"{s / 60:.1f} min"


def trace_cost(fn, *args):
    """(FLOPs, saved-activation bytes) of fn(*args) -> a scalar, forward + backward,
    run on fake tensors: nothing is computed or allocated. Real parameters stay
    untouched (gradients are taken with autograd.grad, never stored in .grad)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode
    saved = {}

    def pack(t):
        st = t.untyped_storage()
        saved[id(st)] = (st, st.nbytes())  # keyed by storage: views share their base's bytes
        return t
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, \
            FlopCounterMode(display=False) as flops:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out, params = fn(*fake)
        if out.requires_grad:
            torch.autograd.grad(out, [p for p in params if p.requires_grad], allow_unused=True)
    return float(flops.get_total_flops()), int(sum(n for _, n in saved.values()))


_RATE = {}


def device_rate(device):
    """FLOP/s of forward + backward of a 3x3, 64-channel, dilated convolution in NHWC
    on `device` (the layer type dense networks spend their time in); cached."""
    device = torch.device(device)
    if device.type in _RATE:
        return _RATE[device.type]
    x = torch.randn(1, 64, 48, 48, device=device).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    conv = torch.nn.Conv2d(64, 64, 3, dilation=2).to(device).to(memory_format=torch.channels_last)
    flops = 3 * 2 * 64 * 64 * 9 * 44 * 44  # forward, grad input, grad weight
    best = float("inf")
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        conv(x).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    _RATE[device.type] = flops / best
    return _RATE[device.type]


def free_memory_bytes(device):
    """What a step may use: free GPU memory, or the CPU's available memory (MemAvailable)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def state_bytes(model, optimizer_name):
    """Parameters + gradients + optimiser state (AdamW: two moments; SGD: momentum)."""
    n = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return n * (4 if optimizer_name == "adamw" else 3)


def dense_step_cost(net, model, batch, optimizer_name, device, detail=""):
    """Cost of a dense step: the dense (or already dense) net over the batch (N, C, H, W)."""
    params = list(model.parameters())
    flops, act = trace_cost(lambda x: (net(x).float().sum(), params), batch)
    return StepCost(flops, act, state_bytes(model, optimizer_name), device_rate(device), detail)


def patch_cost(model, patch, device):
    """(FLOPs, activation bytes) of one patch (1, C, P, Q) forward + backward."""
    params = list(model.parameters())
    return trace_cost(lambda x: (model(x).float().sum(), params), patch.to(device))


def patch_step_cost(model, patch, patches_per_step, chunk, optimizer_name, device, detail=""):
    """Cost of a patch step of `patches_per_step` patches in micro-batches of `chunk`:
    more than one micro-batch adds the graph-free first pass (one more forward, about a
    third of forward + backward)."""
    flops, act = patch_cost(model, patch, device)
    passes = 1.0 if chunk >= patches_per_step else 4.0 / 3.0
    return StepCost(flops * patches_per_step * passes, int(act * min(chunk, patches_per_step)),
                    state_bytes(model, optimizer_name), device_rate(device), detail)


def patch_chunk(per_patch_bytes, budget_mb, device):
    """Patches per micro-batch under the activation budget. auto: a quarter of the free
    memory, at most 2 GiB (beyond that larger micro-batches are no faster on a CPU, and a
    GPU's is better left to cudnn's workspaces)."""
    if budget_mb == "auto":
        budget = min(free_memory_bytes(device) // 4, 2 * 1024 * MIB)
    else:
        budget = float(budget_mb) * MIB
    return max(1, int(budget // max(per_patch_bytes, 1)))


# ------------------------------------------------------------------- a run's training step
@dataclass
class StepSetup:
    """What the cost of a training step on images depends on besides its networks."""
    shape: tuple                 # (N, C, H, W) of one training batch
    method: str                  # dense | patch
    patch_size: tuple | None     # None: an already dense network
    optimizer: str
    sample_fraction: float
    patch_memory_mb: Any
    channels_last: bool
    device: torch.device


def training_step_cost(train_net, model, stride, setup: StepSetup):
    """(StepCost, patches per micro-batch or None) of one step of `train_net` (the dense net at
    output `stride`, or the classifier for the patch method) over a batch of setup.shape."""
    n, c, h, w = setup.shape
    x = torch.empty(setup.shape, device=setup.device)
    if setup.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    detail = f"{n} images of {h}x{w}, {setup.method}"
    if setup.method == "dense":
        if setup.patch_size is not None:
            detail += f", output stride {stride}"
        return dense_step_cost(train_net, model, x, setup.optimizer, setup.device, detail), None
    patch = torch.empty(1, c, *setup.patch_size, device=setup.device)
    grid = math.ceil(h / stride) * math.ceil(w / stride)
    per_step = max(1, round(n * grid * setup.sample_fraction))
    _, per_patch = patch_cost(model, patch, setup.device)
    chunk = patch_chunk(per_patch, setup.patch_memory_mb, setup.device)
    return patch_step_cost(model, patch, per_step, chunk, setup.optimizer, setup.device,
                           detail + f", up to {per_step} patches in micro-batches of {chunk}"), chunk


def memory_limit_bytes(limit_mb, device):
    """The memory a run may use: trainer.memory_limit_mb, or 90% of the free memory (auto)."""
    return 0.9 * free_memory_bytes(device) if limit_mb == "auto" else limit_mb * MIB


def settings_that_fit(settings, nets, setup: StepSetup, step: StepCost, limit):
    """Settings assignments that bring the step under `limit` bytes, cheapest change first:
    a smaller batch, a larger output stride, a narrower zoo network."""
    out = []
    shape = setup.shape
    per_image = step.activation_bytes / shape[0]
    for b in (shape[0] // 2, shape[0] // 4, 1):
        if b >= 1 and per_image * b + step.state_bytes <= limit:
            out.append(f"trainer.batch_size={b}")
            break
    if setup.method != "dense" or nets.patch_size is None:
        return out
    from fcnseg.convert.errors import OutputStrideError
    pad = padding_of(settings.model)
    for s in (nets.stride * 2, nets.stride * 4, nets.stride * 8):
        try:
            net = densify(nets.model, nets.patch_size, output_stride=s, **pad)
        except OutputStrideError:
            continue
        if training_step_cost(net, nets.model, s, setup)[0].memory_bytes <= limit:
            out.append(f"trainer.output_stride={s}")
            break
    if settings.model.builder == "zoo":
        width = float(settings.model.kwargs.get("width_mult", 1.0))
        num_classes, in_channels = nets.spec["kwargs"]["num_classes"], nets.spec["kwargs"]["in_channels"]
        for f in (0.5, 0.25):
            mcfg = dataclasses.asdict(settings.model)
            mcfg["kwargs"] = dict(mcfg["kwargs"], width_mult=width * f)
            try:
                m = build_model(model_spec(mcfg, num_classes, in_channels))
                freeze_batchnorm(m)
                net = densify(m, m.patch_size, output_stride=nets.stride, **pad)
            except Exception:  # noqa: BLE001  a width the family cannot build
                continue
            if training_step_cost(net, m, nets.stride, setup)[0].memory_bytes <= limit:
                out.append(f"model.kwargs.width_mult={width * f:g}")
                break
    return out


def check_training_step(settings, nets, setup: StepSetup, total_steps):
    """(StepCost, patches per micro-batch or None) of the run's step, logged; a TrainingError
    with the settings that fit when it needs more memory than the limit, a warning when it
    would take over a minute on a CPU."""
    step, chunk = training_step_cost(nets.train_net, nets.model, nets.stride, setup)
    logger.info(step.summary())
    device = setup.device
    limit = memory_limit_bytes(settings.trainer.memory_limit_mb, device)
    if step.memory_bytes > limit:
        fixes = settings_that_fit(settings, nets, setup, step, limit)
        raise TrainingError(
            f"one training step needs about {step.memory_bytes / MIB:.0f} MiB "
            f"({step.summary()}), more than the {limit / MIB:.0f} MiB available on "
            f"{device}. Settings estimated to fit: "
            f"{'; '.join(fixes) if fixes else 'none found, use a smaller network'}",
            fixes=fixes)
    if device.type == "cpu" and step.seconds > 60:
        logger.warning(f"one step is expected to take {duration(step.seconds)} on this "
                       f"CPU, the run ({total_steps} steps) about "
                       f"{duration(step.seconds * total_steps)}; a GPU "
                       f"(trainer.device=cuda), a larger output stride, a smaller batch or a "
                       f"narrower network (model.kwargs.width_mult) is faster")
    return step, chunk
