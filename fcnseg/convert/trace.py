"""Turn a patch classifier into a torch.fx graph, and run that graph on a patch to learn its shapes."""
from __future__ import annotations

import torch
import torch.fx
from torch import nn

from .. import ops
from .errors import ConversionError


class _Tracer(torch.fx.Tracer):
    def __init__(self):
        # fcnseg's own ops stay single nodes even when called from generated code.
        super().__init__(autowrap_functions=ops.LEAF_FUNCTIONS)


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """A GraphModule view of `model` that shares its submodules and parameters."""
    if isinstance(model, torch.fx.GraphModule):
        return model
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # torch.fx raises many types; the user needs one message
        raise ConversionError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}). "
            "Data-dependent Python control flow in forward() cannot be converted; "
            "rewrite it as plain tensor operations or pass an nn.Sequential."
        ) from exc
    return torch.fx.GraphModule(model, graph, class_name=type(model).__name__)


class HeadMismatch(RuntimeError):
    """A Linear layer receives a different number of features than it has inputs."""

    def __init__(self, name, got, want):
        super().__init__(f"layer '{name}' expects {want} input features, the patch gives {got}")
        self.got, self.want = got, want


class _ShapeRecorder(torch.fx.Interpreter):
    """Records every node's output (shapes only: it runs on the meta device)."""

    def __init__(self, gm):
        super().__init__(gm)
        self.values = {}

    def run_node(self, n):
        if n.op == "call_module" and isinstance(self.module.get_submodule(n.target), nn.Linear):
            got = self.values[n.args[0]].shape[-1]
            want = self.module.get_submodule(n.target).in_features
            if got != want:
                raise HeadMismatch(n.target, got, want)
        out = super().run_node(n)
        self.values[n] = out
        return out


class _Runner(nn.Module):
    def __init__(self, gm):
        super().__init__()
        self.gm = gm
        self.recorder = None

    def forward(self, x):
        self.recorder = _ShapeRecorder(self.gm)
        self.recorder.run(x)
        return self.recorder.values


def patch_values(gm: torch.fx.GraphModule, in_channels: int, patch_size: tuple[int, int]) -> dict:
    """Each node's value for one (1, C, P, Q) patch, computed on the meta device (no FLOPs)."""
    runner = _Runner(gm)
    state = {
        f"gm.{k}": torch.empty_like(v, device="meta")
        for k, v in list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False))
    }
    dtype = next((p.dtype for p in gm.parameters() if p.is_floating_point()), torch.get_default_dtype())
    x = torch.empty(1, in_channels, *patch_size, device="meta", dtype=dtype)
    # shapes do not depend on the mode; eval keeps batch norm from refusing a batch of one 1x1 map
    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            return torch.func.functional_call(runner, state, (x,), strict=False)
    finally:
        for m, mode in modes.items():
            m.training = mode


def infer_in_channels(gm: torch.fx.GraphModule) -> int:
    """The channel count of the first convolution or linear layer that reads the input."""
    for n in gm.graph.nodes:
        if n.op == "call_module":
            mod = gm.get_submodule(n.target)
            if isinstance(mod, nn.Conv2d):
                return mod.in_channels
    raise ConversionError("cannot infer the input channel count: pass in_channels=")
