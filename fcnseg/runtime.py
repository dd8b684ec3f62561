"""Where and how the work runs: device, torchrun ranks, mixed precision, seeding, atomic
files, host memory and class colours. Training and inference both take these from here, so the two
can never disagree on, say, which precision a GPU gets.

    device = runtime.pick_device("auto")                 # CUDA when present, else CPU
    dtype = runtime.amp_dtype(device)                     # bf16 / fp16 on CUDA, None on CPU
    with runtime.autocast(device, dtype):
        scores = dense(x)
    with runtime.atomic_path(out / "labels.png") as tmp:  # all or nothing on disk
        image.save(tmp, format="PNG")
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import random
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist

# --------------------------------------------------------------------------- device


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


# ------------------------------------------------------------------ torchrun ranks


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


def barrier(timeout_s: float | None = None) -> None:
    """Wait for every rank of the job, joining the process group first if nothing has
    (with gloo whatever the device: a barrier moves no tensors worth a GPU)."""
    if not dist.is_initialized():
        kw = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
        dist.init_process_group("gloo", **kw)
    dist.barrier()


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


# -------------------------------------------------------------------- autocast policy


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


# ------------------------------------------------------------ host memory policy

# glibc mallopt parameters (malloc.h) and glibc's defaults for them
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
GLIBC_TRIM_THRESHOLD, GLIBC_MMAP_THRESHOLD, GLIBC_MMAP_MAX = 128 * 1024, 128 * 1024, 65536
_heap_lock = threading.Lock()
_heap_depth = 0


@functools.lru_cache(maxsize=None)
def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True):
    """Within the block, glibc malloc serves large blocks from its heap and keeps freed ones.

    glibc maps every block above its mmap threshold (at most 32 MB) with a fresh mmap and
    unmaps it on free, so each large map of a CPU pass (240 MB per 48-channel map of the
    membrane net at 1024x1024, 416 MB per layer of a 256-patch batch) arrives as new pages
    that the kernel faults in and zeroes one by one: about 1 s per GB measured here, up to a
    third of a pass. With mmap disabled (M_MMAP_MAX 0) and no trimming inside the block, a
    freed map's pages serve the next map, and the next pass of the same shapes finds its
    pages already there.

    So the project's repeated CPU work runs inside one block for its whole length: a
    training run (all its steps, forward and backward), the images and tiles of an inference
    run, the batches of `fcnseg.patchwise`, every method of the benchmark alike, and a single
    inference forward pass of a DenseClassifier. A demo training step went from 0.48-0.63 s
    to 0.39-0.41 s (idle 2-core CPU, the two settings in one session). The resident size
    inside the block stays at the largest pass's working set (that is the point); on
    leaving the outermost block glibc's default limits are set back (mmap allowed, trim
    threshold 128 KiB) and malloc_trim(0) returns the free pages to the OS. Nested and
    concurrent blocks share one process-wide setting (a depth count). A no-op elsewhere
    (other C libraries, or enabled=False); tensors on a GPU never go through malloc.
    """
    global _heap_depth
    libc = _glibc() if enabled else None
    if libc is None:
        yield
        return
    with _heap_lock:
        _heap_depth += 1
        if _heap_depth == 1:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)
    try:
        yield
    finally:
        with _heap_lock:
            _heap_depth -= 1
            if _heap_depth == 0:
                libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
                libc.malloc_trim(0)


def reuse_host_memory(device: torch.device | str, enabled: bool = True):
    """`reuse_freed_memory` where the work's tensors live in host memory (a CPU device)."""
    return reuse_freed_memory(enabled and torch.device(device).type == "cpu")


# ------------------------------------------------------------- seeding, determinism


def seed_all(seed: int) -> None:
    """Seed python's, numpy's and torch's (all devices') generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool, device: torch.device | str) -> None:
    """deterministic: bitwise-repeatable runs (slower); else let cudnn pick the fastest
    kernels for the shapes it sees."""
    device = torch.device(device)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            # cudnn's deterministic dilated convolutions are 10-80x slower (pytorch#28777)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict:
    """Every generator's state as tensors and plain lists (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict) -> None:
    """Restore what rng_state returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ------------------------------------------------------------------- atomic writes
# Every output goes to a hidden temporary file in the destination folder (same file
# system, so the final rename is atomic), is flushed to disk, then renamed over the
# destination with os.replace: a killed run leaves the old file, the new file or
# nothing, never half a file. Temporaries are named ``.<name>.<pid>.fcnseg-tmp`` so a
# rerun can find and delete the ones a killed run left behind, and so nothing that
# scans a folder for images or checkpoints mistakes them for results.

TMP_SUFFIX = ".fcnseg-tmp"


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def remove_stale_temps(path: str | os.PathLike) -> int:
    """Delete temporaries of ``path`` left by killed runs; returns how many."""
    path = Path(path)
    n = 0
    if path.parent.is_dir():
        for p in path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                n += 1
    return n


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

        with atomic_path(out / "a.png") as tmp:
            image.save(tmp, format="PNG")   # give the format: the name ends in .fcnseg-tmp
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------ colour palettes


def default_palette(num_classes: int) -> list[list[int]]:
    """The Pascal VOC colour map: class bits spread over the high bits of R, G, B.

    Class 0 is black and neighbouring indices get clearly different colours; distinct for up to
    256 classes, so it serves any dataset that ships no palette of its own.
    """
    palette = []
    for k in range(num_classes):
        r = g = b = 0
        c = k
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


def resolve_palette(palette: Sequence[Sequence[int]] | None, num_classes: int) -> list[list[int]]:
    """A palette with a colour for each of ``num_classes`` classes: the given colours,
    completed (or replaced when None) by the default palette."""
    if palette is None:
        return default_palette(num_classes)
    pal = [list(map(int, c)) for c in palette]
    if len(pal) < num_classes:
        pal += default_palette(num_classes)[len(pal):]
    return pal


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int | None = 255,
             ignore_color: Sequence[int] = (255, 255, 255)) -> np.ndarray:
    """``(H, W)`` class indices -> ``(H, W, 3)`` uint8 RGB. ``ignore_index`` (None: no such
    label) and labels without a colour (negative, or past the palette) get ``ignore_color``."""
    pal = np.asarray(palette, np.uint8).reshape(-1, 3)  # (K, 3)
    # one spare row past every colour (and past 255) holds ignore_color for unknown labels
    lut = np.tile(np.asarray(ignore_color, np.uint8), (max(256, len(pal)) + 1, 1))
    lut[: len(pal)] = pal
    if ignore_index is not None:
        lut[ignore_index] = ignore_color
    return lut[np.asarray(mask, dtype=np.int64).clip(-1, len(lut) - 1)]  # -1: the spare row
