"""Resuming restores what fits: a run saved on more GPUs than this process has goes on."""
import random

import numpy as np
import pytest
import torch

from fcnseg import runtime


def test_resume_on_fewer_gpus_warns_and_restores_the_rest():
    state = runtime.rng_state()
    expected = torch.rand(3)
    fake_gpu_state = torch.zeros(16, dtype=torch.uint8)
    state["cuda"] = [fake_gpu_state] * (torch.cuda.device_count() + 2)
    with pytest.warns(UserWarning, match=r"random state of \d+ GPU\(s\), this process sees"):
        runtime.set_rng_state(state) if not torch.cuda.is_available() else \
            runtime.set_rng_state({**state, "cuda": [torch.cuda.get_rng_state(i) for i in
                                                     range(torch.cuda.device_count())] + [fake_gpu_state] * 2})
    assert torch.equal(torch.rand(3), expected)          # the CPU generator is back where it was


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seed_all_seeds_every_generator():
    runtime.seed_all(123)
    a = _draws()
    runtime.seed_all(123)
    assert _draws() == a
    runtime.seed_all(124)
    assert _draws() != a


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    runtime.seed_all(7)
    torch.save(runtime.rng_state(), tmp_path / "rng.pt")
    first = [_draws() for _ in range(3)]
    runtime.seed_all(99)
    runtime.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert [_draws() for _ in range(3)] == first


def test_configure_determinism_on_cpu():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        runtime.configure_determinism(True, "cpu")
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)
