"""Per-node profile of a dense network: where the time goes against where the FLOPs are.

    rows = profile_dense(fcnseg.densify(model), x)      # one row per graph node, in order

Each node of the dense body's fx graph is run on its own by an Interpreter, timed (wall clock
on CPU, CUDA events on GPU; the median of `repeats` passes) and its FLOPs counted by
torch.utils.flop_counter (convolutions and matrix products; pooling, ReLU, additions and layout
copies count 0 FLOPs, they are bound by memory traffic). A node whose share of the time is far
above its share of the FLOPs, or whose GFLOP/s is far below the machine's matmul rate, is where
the dense pass leaves speed on the table. The padding of the input and, for networks with a
per-patch tail, the tail are timed as two extra rows.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.fx
from torch.utils.flop_counter import FlopCounterMode

from fcnseg.runtime import reuse_freed_memory


@dataclass
class NodeProfile:
    name: str            # the fx node's name
    op: str              # what it runs: conv2d, max_pool2d, relu, add, contiguous, ...
    detail: str          # kernel shape, dilation, output shape
    time_s: float
    flops: int

    def as_dict(self) -> dict:
        return asdict(self)


def _target_name(node: torch.fx.Node, gm: torch.fx.GraphModule | None = None) -> str:
    """What a node runs: the function's name, or the module's class (ReLU, BatchNorm2d...)."""
    t = node.target
    if node.op == "call_module":
        return type(gm.get_submodule(t)).__name__ if gm is not None else str(t)
    name = getattr(t, "__name__", None) or str(t)
    return name.lstrip("_") if node.op == "call_function" else name


def _shape(v) -> str:
    if isinstance(v, torch.Tensor):
        return "x".join(str(d) for d in v.shape)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_shape(t) for t in v if isinstance(t, torch.Tensor)) + "]"
    return ""


def _detail(node: torch.fx.Node, args, out) -> str:
    """'in->out kxk' for a node with a 4-D kernel argument, dilation where given, output shape."""
    parts = []
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if len(tensors) >= 2 and tensors[1].dim() == 4 and "conv" in _target_name(node):
        w = tensors[1]                                      # (out, in / groups, kh, kw)
        groups = args[6] if len(args) > 6 and isinstance(args[6], int) else 1
        parts.append(f"{w.shape[1] * groups}->{w.shape[0]} {w.shape[2]}x{w.shape[3]}"
                     + (f" groups {groups}" if groups > 1 else ""))
    dil = _dilation(node, args)
    if dil and dil != (1, 1):
        parts.append(f"d{dil[0]}" if dil[0] == dil[1] else f"d{dil[0]}x{dil[1]}")
    parts.append("out " + _shape(out))
    return ", ".join(parts)


def _dilation(node: torch.fx.Node, args):
    """The dilation argument of a conv2d-like (position 5) or max_pool2d (position 4) call, if any."""
    name = _target_name(node)
    pos = 5 if "conv" in name else (4 if "max_pool" in name else None)
    v = node.kwargs.get("dilation") if pos is not None else None
    if v is None and pos is not None and len(args) > pos:
        v = args[pos]
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return tuple(v)
    return None


class _NodeTimer(torch.fx.Interpreter):
    def __init__(self, gm, sync, count_flops: bool):
        super().__init__(gm)
        self.sync, self.count_flops = sync, count_flops
        self.times: dict[str, float] = {}
        self.flops: dict[str, int] = {}
        self.details: dict[str, str] = {}

    def run_node(self, n):
        if n.op in ("placeholder", "output", "get_attr"):
            return super().run_node(n)
        args, _ = self.fetch_args_kwargs_from_env(n)
        if self.count_flops:
            counter = FlopCounterMode(display=False)
            with counter:
                out = super().run_node(n)
            self.flops[n.name] = counter.get_total_flops()
            self.details[n.name] = _detail(n, args, out)
            return out
        self.sync()
        t = time.perf_counter()
        out = super().run_node(n)
        self.sync()
        self.times[n.name] = time.perf_counter() - t
        return out


def profile_dense(dense, x: torch.Tensor, repeats: int = 3) -> list[NodeProfile]:
    """Per-node time (median of `repeats` passes after one counting pass) and FLOPs of `dense(x)`.

    dense: a network returned by fcnseg.densify (its `body` an fx GraphModule). Runs under
    torch.inference_mode(); the rows follow the graph's order, then 'pad' and 'tail'.
    """
    body = dense.body
    if not isinstance(body, torch.fx.GraphModule):
        raise TypeError(f"profile_dense needs a dense network whose body is an fx GraphModule, got "
                        f"{type(body).__name__} (profile the network before torch.compile)")
    cuda = x.device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(x.device)

    p, q = dense.patch_size
    stride = dense.output_stride
    opt = dense.optimizations
    reuse = bool(opt and opt.reuse_memory) and x.device.type == "cpu"
    rows: dict[str, NodeProfile] = {}
    pad_times, tail_times, timed = [], [], []
    # one allocator block for the whole profile, node by node and whole calls alike: the steady
    # state the benchmark times (a pass on the pages of the pass before), so that page faults
    # show up in neither the nodes nor the "outside the graph" row
    with torch.inference_mode(), reuse_freed_memory(reuse):
        xp = dense.pad(x)
        ho, wo = (xp.shape[-2] - p) // stride[0] + 1, (xp.shape[-1] - q) // stride[1] + 1
        counting = _NodeTimer(body, sync, count_flops=True)
        counting.run(xp)                                   # also fills the heap
        for _ in range(max(1, repeats)):
            sync()
            t = time.perf_counter()
            xp = dense.pad(x)
            sync()
            pad_times.append(time.perf_counter() - t)
            run = _NodeTimer(body, sync, count_flops=False)
            maps = run.run(xp)
            timed.append(run.times)
            if getattr(dense, "tail", None) is not None:
                t = time.perf_counter()
                dense._run_tail(maps, ho, wo)
                sync()
                tail_times.append(time.perf_counter() - t)
    for node in body.graph.nodes:
        if node.name in counting.flops:
            rows[node.name] = NodeProfile(node.name, _target_name(node, body), counting.details[node.name],
                                          statistics.median(t[node.name] for t in timed), counting.flops[node.name])
    out = list(rows.values())
    out.append(NodeProfile("pad", "pad", f"out {_shape(xp)}", statistics.median(pad_times), 0))
    if tail_times:
        out.append(NodeProfile("tail", "per-patch tail", "", statistics.median(tail_times), 0))
    # what the network does around its graph (input checks, output crop and copy), and the
    # interpreter's own overhead: the whole call's median minus the rows above
    whole = []
    with torch.inference_mode(), reuse_freed_memory(reuse):
        dense(x)                                           # fills the heap for the whole calls
        for _ in range(max(1, repeats)):
            sync()
            t = time.perf_counter()
            dense(x)
            sync()
            whole.append(time.perf_counter() - t)
    rest = statistics.median(whole) - sum(r.time_s for r in out)
    out.append(NodeProfile("rest", "outside the graph", "whole call minus the rows above", rest, 0))
    return out


def by_op(rows: list[NodeProfile]) -> list[tuple[str, int, float, int]]:
    """(op, node count, total seconds, total FLOPs), the most time first."""
    acc: dict[str, list] = {}
    for r in rows:
        a = acc.setdefault(r.op, [0, 0.0, 0])
        a[0] += 1
        a[1] += r.time_s
        a[2] += r.flops
    return sorted(((op, *v) for op, v in acc.items()), key=lambda t: -t[2])
