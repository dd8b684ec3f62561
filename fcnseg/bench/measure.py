"""Measurement primitives of the benchmark: timers, peak memory, the machine's matmul rate.

CPU: wall time with time.perf_counter; peak memory as the peak resident-set growth sampled by a
thread during one (untimed) call. glibc keeps freed large blocks mapped unless told otherwise,
which would hide later peaks, so large allocations are forced onto mmap (freed at once).
CUDA: CUDA events around the call, torch.cuda.max_memory_allocated for the peak.

Every method is timed in its steady state, as the project runs repeated work (training steps,
tiles, image folders, patch batches): its timed calls run inside one
`fcnseg.runtime.reuse_freed_memory` block that an untimed call of the same method has already
filled, so no method pays the kernel's page faults for maps it had the step before and none is
favoured by another's heap. The untimed first call runs on a trimmed heap, so its peak is the
method's own.
"""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field

import torch

from fcnseg.runtime import memory, reuse_host_memory


def release_freed_memory() -> None:
    """Make glibc return every freed block above 128 KiB to the OS (RSS then tracks live data)."""
    libc = memory._glibc()
    if libc is None:                   # not glibc (macOS, musl): peaks may read low, said in the notes
        return
    libc.mallopt(memory.M_MMAP_THRESHOLD, memory.GLIBC_MMAP_THRESHOLD)  # fixed, so big tensors are mmapped
    libc.mallopt(memory.M_TRIM_THRESHOLD, memory.GLIBC_TRIM_THRESHOLD)  # trim the heap top eagerly


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Context manager: peak RSS growth (bytes) over the block, sampled every `interval` s."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak = interval, 0

    def __enter__(self):
        self.base = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes() - self.base)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes() - self.base)


class _CudaPeak:
    def __init__(self, device):
        self.device, self.peak = device, 0

    def __enter__(self):
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize(self.device)
        self.peak = torch.cuda.max_memory_allocated(self.device) - self.base


@dataclass
class Timing:
    times: list = field(default_factory=list)   # seconds, one per timed repeat
    peak_bytes: int = 0
    flops: int = 0                               # counted by FlopCounterMode in the warm-up, if asked

    @property
    def median(self) -> float:
        return statistics.median(self.times)


class Timer:
    """Warm-up once (measuring memory and, optionally, FLOPs), then time up to `repeats` calls.

    Stops early once `budget_s` seconds of timed calls have run, but always times at least one.
    """

    def __init__(self, device: torch.device, repeats: int = 3, budget_s: float = 10.0):
        self.device, self.repeats, self.budget_s = device, repeats, budget_s

    def __call__(self, fn, *, count_flops: bool = False, warmup: bool = True, repeats: int | None = None) -> Timing:
        """warmup=False: a single call, timed while its memory is sampled (for long one-off runs;
        a caller that wants it in steady state runs it inside its own `steady()` block)."""
        out = Timing()
        if not warmup:
            with self.steady(), PeakRSS() if self.device.type == "cpu" else _CudaPeak(self.device) as peak:
                out.times.append(self._time_once(fn))
            out.peak_bytes = peak.peak
            return out
        with self.steady():
            return self._warm_and_time(fn, out, count_flops, repeats)

    def steady(self):
        """The allocator block of the steady state (host memory only; see the module's doc)."""
        return reuse_host_memory(self.device)

    def _warm_and_time(self, fn, out, count_flops, repeats) -> Timing:
        # the warm-up call also gives peak memory and, if asked, the FLOPs actually executed
        # (FlopCounterMode adds a Python hook per op: negligible next to a dense layer)
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()
        with (PeakRSS() if self.device.type == "cpu" else _CudaPeak(self.device)) as peak, counter:
            fn()
        out.peak_bytes = peak.peak
        if count_flops:
            out.flops = counter.get_total_flops()
        spent, repeats = 0.0, self.repeats if repeats is None else repeats
        while len(out.times) < repeats and (repeats == 0 or not out.times or spent < self.budget_s):
            out.times.append(self._time_once(fn))
            spent += out.times[-1]
        return out

    def compare(self, fns: dict, *, count_flops=()) -> dict:
        """Time several methods round-robin (rotating the order each round): a load spike on a
        shared machine then hits every method alike, so their ratios stay meaningful."""
        out = {}
        for name, fn in fns.items():                       # warm-ups: memory and FLOPs
            out[name] = self(fn, count_flops=name in count_flops, warmup=True, repeats=0)
        names, spent = list(fns), 0.0
        for r in range(self.repeats):
            if r and spent > self.budget_s * len(names):
                break
            for name in names[r % len(names):] + names[: r % len(names)]:
                with self.steady():                        # each method on a heap it has filled
                    fns[name]()
                    out[name].times.append(self._time_once(fns[name]))
                spent += out[name].times[-1]
        return out

    def _time_once(self, fn) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(end) / 1e3
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """The machine's dense float32 matmul rate: the ceiling any convolution can hope for."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    timing = Timer(device, repeats, budget_s=20.0)(lambda: torch.mm(a, b))
    return 2 * n ** 3 / timing.median / 1e9


MATMUL_SIDES = (1024, 2048)


def matmul_rates(device: torch.device) -> dict[str, float]:
    """{str(n): GFLOP/s} of an n x n float32 matmul for each side in MATMUL_SIDES."""
    return {str(n): matmul_gflops(device, n) for n in MATMUL_SIDES}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None
