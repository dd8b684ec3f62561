"""Seeds, generator states and determinism."""
from __future__ import annotations

import os
import random
import warnings

import numpy as np
import torch


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
    """Restore what rng_state returned. CUDA generators are restored for the GPUs that both the
    saved run and this process have; a resume on fewer (or no) GPUs warns and leaves the others
    seeded as they are, instead of failing (the run continues, bitwise repeatability aside)."""
    torch.set_rng_state(state["torch"])
    saved = list(state["cuda"] or [])
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for i, gpu_state in enumerate(saved[:here]):
        torch.cuda.set_rng_state(gpu_state, i)
    if len(saved) > here:
        warnings.warn(f"the checkpoint holds the random state of {len(saved)} GPU(s), this process sees "
                      f"{here}: restored {min(here, len(saved))}; the run goes on, but its random draws "
                      f"on the GPUs not restored differ from an uninterrupted run", stacklevel=2)
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
