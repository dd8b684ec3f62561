"""torchrun / DistributedDataParallel plumbing: process group, device, samplers.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them everything is a single
process. Evaluation shards the validation set without the padding that
DistributedSampler adds (duplicated images would be counted twice), so the all-reduced
confusion matrix equals a single-process evaluation exactly.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world_size > 1


def pick_device(pref, local_rank=0):
    """'auto' -> CUDA when present, else CPU; 'cuda' without CUDA is an error."""
    if pref not in ("auto", "cpu", "cuda"):
        raise ValueError(f"trainer.device must be auto, cpu or cuda, got {pref!r}")
    if pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but torch sees no CUDA device; "
                           "use trainer.device=cpu or auto")
    if pref != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device_pref):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local, device)


def teardown(d):
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


class ShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + world, ...: every item exactly once across ranks."""

    def __init__(self, n, rank, world_size):
        self.idx = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self):
        return len(self.idx)


def all_reduce_mean(value, d):
    """Mean of a python float over ranks (for logging the training loss)."""
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return float(t) / d.world_size
