"""Resuming restores what fits: a run saved on more GPUs than this process has goes on."""
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
