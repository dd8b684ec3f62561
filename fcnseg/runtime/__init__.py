"""Where and how the work runs, one module per concern; training and inference both take these
from here, so the two can never disagree on, say, which precision a GPU gets.

- `device`: the device a setting names, torchrun ranks and their process group;
- `precision`: the precision setting (IEEE fp32, tf32, bf16, fp16, auto), its float32 math flags,
  autocast and loss scaling;
- `memory`: the host-memory policy of repeated CPU passes;
- `seeding`: seeds, generator states, determinism;
- `files`: all-or-nothing writes and the temporaries killed runs leave.

    device = runtime.pick_device("auto")                 # CUDA when present, else CPU
    with runtime.precision_context("auto", device):   # bf16 where native, else IEEE fp32
        scores = dense(x)
    with runtime.atomic_path(out / "labels.png") as tmp:  # all or nothing on disk
        image.save(tmp, format="PNG")

The names below are the package's public surface; each is defined once, in its module.
"""
from .device import (
                     DistEnv,
                     ShardSampler,
                     all_reduce_mean,
                     barrier,
                     broadcast_from_rank0,
                     cleanup_distributed,
                     device_memory_budget_mb,
                     dist_env,
                     init_distributed,
                     pick_device,
                     shard,
                     unread_parameters,
)
from .files import TMP_SUFFIX, atomic_path, remove_stale_temps, temp_path, write_text_atomic
from .memory import reuse_freed_memory, reuse_host_memory
from .precision import (
                     Precision,
                     amp_dtype,
                     autocast,
                     float32_math,
                     float32_math_state,
                     grad_scaler,
                     precision_context,
                     resolve_precision,
)
from .seeding import configure_determinism, rng_state, seed_all, set_rng_state

__all__ = [
    "DistEnv", "ShardSampler", "all_reduce_mean", "barrier", "broadcast_from_rank0", "cleanup_distributed",
    "device_memory_budget_mb", "dist_env", "unread_parameters",
    "init_distributed", "pick_device", "shard", "TMP_SUFFIX", "atomic_path", "remove_stale_temps",
    "temp_path", "write_text_atomic", "reuse_freed_memory", "reuse_host_memory", "amp_dtype",
    "autocast", "grad_scaler", "Precision", "float32_math", "float32_math_state", "precision_context",
    "resolve_precision", "configure_determinism", "rng_state", "seed_all", "set_rng_state",
]
