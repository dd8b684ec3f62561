"""Which device a run uses and its place in a torchrun job."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.fx


def pick_device(pref: str = "auto", local_rank: int | None = None) -> torch.device:
    """The device a setting names: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:i".

    Under torchrun, "auto" and "cuda" mean this process's GPU (LOCAL_RANK, or
    ``local_rank`` when given); "cuda:i" is taken literally. A CUDA choice without CUDA
    is an error, never a silent fall-back to the CPU.
    """
    pref = str(pref)
    if pref not in ("auto", "cpu", "cuda") and not pref.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<index>, got {pref!r}")
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device={pref} but torch sees no CUDA device; use device=cpu or "
                           f"device=auto")
    if pref.startswith("cuda:"):
        try:
            index = int(pref[len("cuda:"):])
        except ValueError:
            raise ValueError(f"device={pref}: the GPU index must be an integer, e.g. cuda:0") from None
    else:
        index = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else int(local_rank)
    if not 0 <= index < torch.cuda.device_count():
        raise RuntimeError(f"device={pref} asks for GPU {index} but torch sees "
                           f"{torch.cuda.device_count()}; use an index below that")
    return torch.device("cuda", index)


@dataclass
class DistEnv:
    """This process's place in a torchrun job; a plain run is rank 0 of 1."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world < 1 or not 0 <= rank < world:
        raise RuntimeError(f"RANK={rank} is not in [0, WORLD_SIZE={world}); launch with torchrun "
                           f"or unset both")
    return rank, world, local


def init_distributed(device: str = "auto", *, backend: str | None = None,
                     timeout_s: float | None = None) -> DistEnv:
    """Read torchrun's environment, pick (and select) this rank's device and, in a job
    of several processes, join the process group: nccl on CUDA, gloo on CPU unless
    ``backend`` says otherwise. Pair with cleanup_distributed."""
    rank, world, local = dist_env()
    dev = pick_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        kw = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
        dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"), **kw)
    return DistEnv(rank, world, local, dev)


def cleanup_distributed(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _join_process_group(timeout_s: float | None) -> None:
    """Join the job's process group, with gloo, unless something already has: barriers and
    small objects move no tensors worth a GPU."""
    if not dist.is_initialized():
        kw = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
        dist.init_process_group("gloo", **kw)


def barrier(timeout_s: float | None = None) -> None:
    """Wait for every rank of the job."""
    _join_process_group(timeout_s)
    dist.barrier()


def broadcast_from_rank0(obj, rank: int, timeout_s: float | None = None):
    """Rank 0's picklable ``obj`` on every rank; an exception rank 0 sends is raised on every rank,
    so the job fails together instead of waiting on a rank that has stopped."""
    _join_process_group(timeout_s)
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def shard(n: int, rank: int, world_size: int) -> list[int]:
    """Indices rank, rank + world, ...: every item exactly once across ranks, without the
    padding DistributedSampler adds (a duplicated image would be counted twice)."""
    return list(range(rank, n, world_size))


class ShardSampler(torch.utils.data.Sampler):
    """A DataLoader sampler over this rank's shard (see shard)."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.idx = shard(n, rank, world_size)

    def __iter__(self):
        return iter(self.idx)

    def __len__(self) -> int:
        return len(self.idx)


def all_reduce_mean(value: float, env: DistEnv) -> float:
    """Mean of a python float over ranks (e.g. the training loss for the log)."""
    if not env.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return float(t) / env.world_size


def device_memory_budget_mb(device: torch.device | str, fraction: float = 0.5) -> float | None:
    """Megabytes one pass may use on ``device``: ``fraction`` of the memory free on a CUDA device
    right now (torch.cuda.mem_get_info, so other processes' use counts), leaving the rest to
    cuDNN's workspaces and the caching allocator. None on other devices: a CPU's budget is a
    setting (memory_mb), since its free memory says little about what a pass may take."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return fraction * free / 2 ** 20


def unread_parameters(net: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters a dense network (fcnseg.densify) never reads: the
    classifier's parameters that no tensor of its converted graph or per-patch tail shares
    storage with, e.g. a head the dense graph does not compute. DistributedDataParallel needs
    find_unused_parameters=True for those, or its gradient reduction waits for them forever.
    Any other module: [] (its forward is taken to read every parameter)."""
    body, classifier = getattr(net, "body", None), getattr(net, "classifier", None)
    if not isinstance(body, torch.fx.GraphModule) or classifier is None:
        return []
    read = set()
    for graph_module in (body, getattr(net, "per_patch_tail", None)):
        if graph_module is None:
            continue
        read.update(p.untyped_storage().data_ptr() for p in graph_module.parameters())  # call_module layers
        for node in graph_module.graph.nodes:
            if node.op == "get_attr":
                value = graph_module
                for part in node.target.split("."):
                    value = getattr(value, part)
                if isinstance(value, torch.Tensor):
                    read.add(value.untyped_storage().data_ptr())
    return [name for name, p in classifier.named_parameters()
            if p.requires_grad and p.untyped_storage().data_ptr() not in read]
