"""CUDA: the dense network on the GPU equals the CPU reference; skipped where there is no GPU."""
import pytest
import torch

import fcnseg
from helpers import K, ResidualConcat, alexnet_like

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("net,patch", [(alexnet_like, 83), (ResidualConcat, 14)])
def test_cuda_float64_equals_cpu_patchwise(net, patch):
    model = net().double().eval()
    x = torch.randn(2, 3, 19, 17, dtype=torch.float64)
    ref = fcnseg.patchwise(model, x, patch)
    for optimize in (True, False):
        dense = fcnseg.densify(model.cuda(), patch, optimize=optimize)
        got = dense(x.cuda()).cpu()
        assert ((got - ref).abs().max() / ref.abs().max()) <= 1e-9, optimize


def test_cuda_default_dense_network_with_autocast_keeps_labels():
    model = alexnet_like().eval()
    x = torch.randn(1, 3, 40, 36)
    ref = fcnseg.patchwise(model, x, 83)
    fast = fcnseg.densify(model.cuda(), 83)               # the optimised form: channels_last, folded BN
    with torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16):
        got = fast(x.cuda()).float().cpu()
    assert got.shape == (1, K, 40, 36)
    assert (got.argmax(1) == ref.argmax(1)).float().mean() > 0.95   # reduced precision: labels, not bits
    assert ((got - ref).abs().max() / ref.abs().max()) < 5e-2
