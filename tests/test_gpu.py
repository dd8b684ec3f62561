"""CUDA: the production kernels (channels_last float32 and bf16, ceil-mode edge maps, the
squeeze-excitation tail, several heads, gradients) against float64 patch-by-patch on the CPU,
the IEEE float32 policy and the device-sized budgets. Skipped where there is no GPU;
tools/gpu_check.py runs them (`pytest -m gpu`)."""
import pytest
import torch

import fcnseg
from fcnseg import runtime
from fcnseg.bench.equivalence import check_equivalence

from helpers import K, ResidualConcat, RNet, SqueezeExciteDepthwise, alexnet_like

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

NETS = {"ceil-mode, two heads": (RNet, None, (30, 28)),
        "SE tail, depthwise": (SqueezeExciteDepthwise, None, (20, 18)),
        "residual, concat": (ResidualConcat, 14, (17, 15)),
        "alexnet-like": (alexnet_like, 83, (20, 18))}


@pytest.mark.parametrize("net,patch", [(alexnet_like, 83), (ResidualConcat, 14)])
def test_cuda_float64_equals_cpu_patchwise(net, patch):
    model = net().double().eval()
    x = torch.randn(2, 3, 19, 17, dtype=torch.float64)
    ref = fcnseg.patchwise(model, x, patch)
    for optimize in (True, False):
        dense = fcnseg.densify(model.cuda(), patch, optimize=optimize)
        got = dense(x.cuda()).cpu()
        assert ((got - ref).abs().max() / ref.abs().max()) <= 1e-9, optimize


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("mode", ["fp32", "tf32", "bf16"])
def test_cuda_production_kernels_forward_and_gradients(name, mode):
    """The default (optimised, channels_last) dense network on the GPU: IEEE fp32 within its
    tolerance, tf32/bf16 judged by labels, score error and gradient direction."""
    if mode == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cls, patch, size = NETS[name]
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size)
    r = check_equivalence(cls().eval(), x, mode, "cuda", patch_size=patch)
    assert r.ok, r.as_dict()
    if mode != "fp32":
        assert r.label_agreement > 0.9 and not r.exact


def test_fp32_is_ieee_on_cuda_and_tf32_is_not():
    torch.manual_seed(0)
    a, b = torch.randn(512, 512, device="cuda"), torch.randn(512, 512, device="cuda")
    exact = (a.double() @ b.double())
    with runtime.precision_context("fp32", "cuda"):
        assert runtime.float32_math_state()["tf32"] is False
        ieee = ((a @ b).double() - exact).abs().max().item()
    with runtime.precision_context("tf32", "cuda"):
        assert runtime.float32_math_state()["tf32"] is True
        tf32 = ((a @ b).double() - exact).abs().max().item()
    assert ieee < 1e-3
    if torch.cuda.get_device_capability()[0] >= 8:         # Ampere and later have TF32
        assert tf32 > 10 * ieee


def test_bf16_dense_network_keeps_labels_in_float32_scores():
    model = alexnet_like().eval()
    x = torch.randn(1, 3, 40, 36)
    ref = fcnseg.patchwise(model, x, 83)
    fast = fcnseg.densify(model.cuda(), 83, precision="auto")      # bf16 (or fp16) on a GPU
    got = fast(x.cuda()).cpu()
    assert got.shape == (1, K, 40, 36) and got.dtype == torch.float32
    assert (got.argmax(1) == ref.argmax(1)).float().mean() > 0.95   # reduced precision: labels, not bits
    assert ((got - ref).abs().max() / ref.abs().max()) < 5e-2


def test_budgets_come_from_the_device():
    from fcnseg.bench.methods import patch_batch_size
    from fcnseg.infer.tiling import auto_tile_size
    free_mb = torch.cuda.mem_get_info()[0] / 2 ** 20
    assert 0 < runtime.device_memory_budget_mb("cuda") <= free_mb
    from fcnseg import zoo
    model = zoo.spec("membrane_net").build(2, 1, 1.0).eval().cuda()
    assert patch_batch_size(model.patch_size, 1, "cuda", model) > 256      # not the CPU cap
    dense = fcnseg.densify(model)
    small = auto_tile_size(dense, 1, 1e9)                        # a huge memory_mb: the device caps it
    assert small < 1 << 15


def test_explicit_gpu_index_is_accepted():
    from fcnseg.settings import check_device
    check_device("trainer.device", "cuda:0")
    assert runtime.pick_device("cuda:0") == torch.device("cuda", 0)
