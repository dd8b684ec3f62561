"""The precision rule: names resolve per device, flags are set and restored, reduced precision
is never called exact, and the dense network under bf16 keeps its labels."""

import pytest
import torch

import fcnseg
from fcnseg import runtime
from fcnseg.infer.tiling import forward_windows
from fcnseg.runtime import precision as prec
from fcnseg.settings import PRECISIONS

from helpers import alexnet_like, toy_model


def test_every_setting_value_resolves_or_names_the_fix_on_cpu():
    assert prec.PRECISIONS == PRECISIONS
    assert prec.resolve_precision("fp32", "cpu").autocast_dtype is None
    assert prec.resolve_precision("bf16", "cpu").autocast_dtype is torch.bfloat16
    for cuda_only in ("tf32", "fp16"):
        with pytest.raises(ValueError, match=f"precision={cuda_only}.*use precision=fp32"):
            prec.resolve_precision(cuda_only, "cpu")
    with pytest.raises(ValueError, match="precision must be one of auto, fp32"):
        prec.resolve_precision("half", "cpu")


def test_auto_on_cpu_is_bf16_only_where_it_is_native(monkeypatch):
    monkeypatch.setattr(prec, "cpu_native_bf16", lambda: True)
    p = prec.resolve_precision("auto", "cpu")
    assert (p.name, p.requested, p.exact) == ("bf16", "auto", False)
    monkeypatch.setattr(prec, "cpu_native_bf16", lambda: False)
    assert prec.resolve_precision("auto", "cpu").name == "fp32"


def test_native_bf16_needs_the_cpu_flags(monkeypatch):
    prec.cpu_native_bf16.cache_clear()
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"avx2", "fma"})
    try:
        assert not prec.cpu_native_bf16()            # oneDNN's answer alone is not enough
    finally:
        prec.cpu_native_bf16.cache_clear()


def test_context_sets_ieee_and_restores_every_flag():
    before = prec.float32_math_state()
    with prec.precision_context("fp32", "cpu") as p:
        inside = prec.float32_math_state()
        assert p.name == "fp32" and not torch.is_autocast_enabled("cpu")
    assert inside["tf32"] is False
    assert all(v == "ieee" for k, v in inside.items() if k.startswith(("cuda.", "cudnn.", "mkldnn.")))
    assert prec.float32_math_state() == before


def test_tf32_flags_can_be_set_without_a_gpu_and_are_restored():
    before = prec.float32_math_state()
    restore = prec._saved_float32_math()
    try:
        prec._set_float32_math("tf32")
        state = prec.float32_math_state()
        assert state["tf32"] is True and state["cuda.matmul"] == "tf32"
        assert state.get("mkldnn.conv", "ieee") == "ieee"     # oneDNN stays strict
    finally:
        restore()
    assert prec.float32_math_state() == before


def test_bf16_context_autocasts_and_nests():
    with prec.precision_context("bf16", "cpu"):
        assert torch.get_autocast_dtype("cpu") is torch.bfloat16 and torch.is_autocast_enabled("cpu")
        with prec.precision_context("fp32", "cpu"):
            assert not torch.is_autocast_enabled("cpu")
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")
    with prec.precision_context(None) as p:
        assert p is None


def test_old_boolean_amp_form_maps_to_the_rule(monkeypatch):
    monkeypatch.setattr(prec, "cpu_native_bf16", lambda: False)
    assert prec.amp_dtype("cpu", True) is None and prec.amp_dtype("cpu", False) is None
    assert prec.amp_dtype("cpu", "bf16") is torch.bfloat16
    assert not prec.grad_scaler("cpu", prec.resolve_precision("bf16", "cpu")).is_enabled()


def test_densify_precision_argument_runs_bf16_and_returns_float32_scores():
    torch.manual_seed(0)
    model = alexnet_like().eval()
    x = torch.randn(1, 3, 30, 26)
    ref = fcnseg.patchwise(model.double(), x.double(), 83)
    model.float()
    exact = fcnseg.densify(model, 83, precision="fp32")
    fast = fcnseg.densify(model, 83, precision="bf16")
    with torch.inference_mode():
        a, b = exact(x), fast(x)
    assert a.dtype == b.dtype == torch.float32
    scale = ref.abs().max()
    assert ((a.double() - ref).abs().max() / scale) < 1e-5                  # IEEE fp32
    err = ((b.double() - ref).abs().max() / scale).item()
    assert 1e-5 < err < 5e-2                                                   # bf16: visibly not exact
    assert (b.argmax(1) == ref.argmax(1)).float().mean() > 0.9
    with pytest.raises(ValueError, match="precision: got 'int8'; choose one of auto, fp32"):
        fcnseg.densify(model, 83, precision="int8")


def test_bf16_training_step_keeps_float32_master_gradients():
    """Autocast around the dense forward (as training does): gradients reach the float32
    parameters in float32, close to the IEEE ones (the banded weight gradient included)."""
    torch.manual_seed(0)
    model = alexnet_like().eval()
    dense = fcnseg.densify(model, 83)
    x = torch.randn(1, 3, 24, 20)
    weights = torch.randn(1, 7, 24, 20)

    def grads(name):
        model.zero_grad()
        with prec.precision_context(name, "cpu"):
            out = dense(x)
        (out.float() * weights).sum().backward()
        return [p.grad.clone() for p in model.parameters()]
    exact, fast = grads("fp32"), grads("bf16")
    assert all(g.dtype == torch.float32 for g in fast)
    for a, b in zip(exact, fast):       # bf16 sums: the same direction, not the same bits
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.98
    assert any(((a - b).abs().max() / a.abs().max()) > 1e-6 for a, b in zip(exact, fast))  # really bf16


def test_autocast_off_on_a_cpu_without_native_bf16(monkeypatch):
    from fcnseg.runtime import precision
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: False)
    for setting in ("auto", "fp32", True, False):
        assert runtime.amp_dtype("cpu", setting) is None
        assert runtime.amp_dtype(torch.device("cpu"), setting) is None
    with pytest.raises(ValueError, match="precision=fp16: .* use precision=fp32"):
        runtime.amp_dtype("cpu", "fp16")


@pytest.mark.parametrize("bf16, want", [(True, torch.bfloat16), (False, torch.float16)])
def test_amp_on_cuda_prefers_bf16(monkeypatch, bf16, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert runtime.amp_dtype("cuda", "auto") is want
    assert runtime.amp_dtype("cuda:1", True) is want
    assert runtime.amp_dtype("cuda", False) is None


def test_grad_scaler_only_for_float16():
    assert runtime.grad_scaler("cpu", torch.float16).is_enabled()
    assert not runtime.grad_scaler("cpu", torch.bfloat16).is_enabled()
    assert not runtime.grad_scaler("cpu", None).is_enabled()


def test_autocast_context():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with runtime.autocast("cpu", None):
        assert (a @ b).dtype == torch.float32
    with runtime.autocast(torch.device("cpu"), torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16


def test_inference_takes_its_precision_from_the_one_rule(monkeypatch):
    """Tiled inference resolves its precision setting by the rule training uses
    (fcnseg.runtime.precision): auto is bf16 only on a CPU with native bf16."""
    import fcnseg
    from fcnseg.runtime import precision
    dense = fcnseg.densify(toy_model(num_classes=3, in_channels=1))
    x = torch.randn(2, 1, 21, 21)
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: False)
    assert forward_windows(dense, x, precision="auto").dtype == torch.float32     # emulated bf16: fp32
    assert forward_windows(dense, x, precision="bf16").dtype == torch.bfloat16    # asked for
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: True)
    assert forward_windows(dense, x, precision="auto").dtype == torch.bfloat16
    assert forward_windows(dense, x, precision=True).dtype == torch.bfloat16        # the old boolean: auto
    assert forward_windows(dense, x, precision=False).dtype == torch.float32       # the old boolean: IEEE fp32
    assert forward_windows(dense, x, precision="fp32").dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_and_precision_rule_on_a_real_gpu(no_torchrun):
    import fcnseg
    dev = runtime.pick_device("auto")
    assert dev == torch.device("cuda", 0)
    want = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert runtime.amp_dtype(dev) is want
    assert runtime.grad_scaler(dev, want).is_enabled() == (want is torch.float16)
    env = runtime.init_distributed("auto")  # one process: selects the GPU, joins no group
    assert env.device == dev and torch.cuda.current_device() == 0 and not env.enabled
    dense = fcnseg.densify(toy_model(num_classes=3, in_channels=1).to(dev))
    x = torch.randn(2, 1, 21, 21)
    assert forward_windows(dense, x, precision="auto").dtype is want
    assert forward_windows(dense, x, precision="fp32").dtype == torch.float32
