"""The optimised dense network (densify's default) computes what patch-by-patch computes, forward and backward."""
import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

import fcnseg
from fcnseg import ops
from fcnseg.convert import optimize, pooling
from fcnseg.convert.optimize import drop_identity_windows, num_threads
from fcnseg.runtime import reuse_freed_memory
from fcnseg.runtime.memory import _glibc

from helpers import grads_match


def membrane_like(c=1, width=4):
    """The membrane net's shape in miniature: conv/max-pool pairs then an FC head on a 3x3 map."""
    net = nn.Sequential(
        nn.Conv2d(c, width, 3), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(width, width, 2), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(width * 3 * 3, 6), nn.ReLU(), nn.Linear(6, 3))
    net.patch_size = (18, 18)     # 18 -conv3-> 16 -pool-> 8 -conv2-> 7 -pool-> 3
    return net


def avgpool_net(c=3):
    """LeNet-like: average pooling becomes a dilated depthwise sum in the dense network."""
    net = nn.Sequential(
        nn.Conv2d(c, 4, 3), nn.Tanh(), nn.AvgPool2d(2, 2),
        nn.Conv2d(4, 5, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2))
    net.patch_size = (10, 10)     # 10 -> 8 -> 4 -> 2 -> global average
    return net


def batchnorm_net(c=3):
    """Conv -> BatchNorm (eval, non-trivial statistics) pairs: folded into one conv by the rewrite."""
    net = nn.Sequential(
        nn.Conv2d(c, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(4, 5, 3, bias=False), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 2 * 2, 2))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    net.patch_size = (10, 10)     # 10 -> 8 -> 4 -> 2, flattened 5 x 2 x 2
    return net


NETS = {"membrane_like": (membrane_like, 1), "avgpool": (avgpool_net, 3), "batchnorm": (batchnorm_net, 3),
        "batchnorm_gray": (batchnorm_net, 1)}    # folded conv on a 1-channel map: NHWC kernel view


def _inputs(name, dtype, h=11, w=9):
    build, c = NETS[name]
    torch.manual_seed(0)
    model = build(c).to(dtype).eval()
    x = torch.randn(2, c, h, w, dtype=dtype)
    return model, x


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_default_forward_equals_patchwise(name, dtype, tol):
    model, x = _inputs(name, dtype)
    ref = fcnseg.patchwise(model, x)
    out = fcnseg.densify(model)(x)
    assert out.shape == ref.shape and out.dtype == dtype
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_default_backward_equals_patch_training(name, dtype, tol):
    """Masked per-pixel loss through the optimised network == loss over the same patches."""
    model, x = _inputs(name, dtype)
    pixels = torch.tensor([[0, 0], [5, 4], [10, 8], [3, 7]])
    target = torch.tensor([1, 0, 1, 0])
    out = fcnseg.densify(model)(x[:1])                                    # (1, K, H, W)
    dense_loss = F.cross_entropy(out[0, :, pixels[:, 0], pixels[:, 1]].T, target, reduction="sum")
    dense_grads = torch.autograd.grad(dense_loss, list(model.parameters()))
    patches = fcnseg.crop_patches(x[:1], pixels, model.patch_size)
    patch_loss = F.cross_entropy(model(patches).reshape(len(pixels), -1), target, reduction="sum")
    patch_grads = torch.autograd.grad(patch_loss, list(model.parameters()))
    torch.testing.assert_close(dense_loss, patch_loss, atol=tol, rtol=tol)
    for g_dense, g_patch in zip(dense_grads, patch_grads):
        torch.testing.assert_close(g_dense, g_patch, atol=tol, rtol=tol)


# the outputs of max pools and ReLUs, whichever form the rewrite gave them
MAPS_AFTER_REWRITE = (F.max_pool2d, pooling._max_pool2d, optimize._conv_relu)


def test_every_map_is_channels_last():
    model, x = _inputs("membrane_like", torch.float32)
    body = fcnseg.densify(model).body
    seen = []

    class Check(torch.fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            # skip weights and the raw output of a conv on a 1-channel map (converted right after)
            if node.op == "call_module" or (node.op == "call_function" and node.target in MAPS_AFTER_REWRITE):
                seen.append(node.name)
                assert result.is_contiguous(memory_format=torch.channels_last), node.name
            return result

    Check(body).run(fcnseg.densify(model, optimize=False).pad(x))
    assert len(seen) == 5          # 3 ReLUs (fused into their convolutions) and 2 max pools were checked


def test_identity_windows_are_dropped_and_real_ones_kept():
    def f(x):
        x = ops.avg_pool2d_dilated(x, (1, 1), (1, 1), (16, 16), None)   # a copy
        x = F.max_pool2d(x, (1, 1), (1, 1), 0, (4, 4))                  # a copy
        return ops.avg_pool2d_dilated(x, (2, 2), (1, 1), (2, 2), None)   # real
    gm = torch.fx.symbolic_trace(f)
    assert drop_identity_windows(gm) == 2
    gm.recompile()
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets == [ops.avg_pool2d_dilated]
    x = torch.randn(1, 2, 7, 7)
    torch.testing.assert_close(gm(x), f(x))


def _bn_calls(body):
    return [n for n in body.graph.nodes if n.op == "call_module"
            and isinstance(body.get_submodule(n.target), nn.BatchNorm2d)]


def test_batchnorm_is_folded_by_default_and_kept_by_the_plain_graph():
    model, x = _inputs("batchnorm", torch.float64)
    plain = fcnseg.densify(model, optimize=False)
    fast = fcnseg.densify(model)
    assert len(_bn_calls(plain.body)) == 2 and _bn_calls(fast.body) == []     # both norms were folded
    assert plain.optimizations is None and fast.optimizations == fcnseg.Optimizations()
    torch.testing.assert_close(plain(x), fast(x), atol=1e-10, rtol=1e-10)
    unfolded = fcnseg.densify(model, optimize=fcnseg.Optimizations(fold_batchnorm=False))
    assert len(_bn_calls(unfolded.body)) == 2
    torch.testing.assert_close(unfolded(x), fcnseg.patchwise(model, x), atol=1e-10, rtol=1e-10)


def test_shares_parameters_and_modes():
    model, x = _inputs("membrane_like", torch.float32)
    dense = fcnseg.densify(model)
    assert type(dense) is fcnseg.DenseClassifier
    assert {id(p) for p in dense.parameters()} == {id(p) for p in model.parameters()}
    with torch.no_grad():
        model[-1].bias += 1.0                                               # a change to the classifier...
    torch.testing.assert_close(dense(x), fcnseg.patchwise(model, x), atol=1e-4, rtol=1e-4)  # ...is seen


def test_threads_setting_is_restored_and_checked():
    model, x = _inputs("avgpool", torch.float32)
    before = torch.get_num_threads()
    dense = fcnseg.densify(model, optimize=fcnseg.Optimizations(threads=1))
    dense(x)
    assert torch.get_num_threads() == before
    with num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        fcnseg.Optimizations(threads=0)


def test_refuses_an_unknown_optimize_value():
    with pytest.raises(TypeError, match="Optimizations"):
        fcnseg.densify(membrane_like(), optimize="fast")


@pytest.mark.parametrize("optimize", [False, fcnseg.Optimizations(channels_last=False)])
def test_plain_and_nchw_forms_still_exact(optimize):
    model, x = _inputs("membrane_like", torch.float64)
    out = fcnseg.densify(model, optimize=optimize)(x)
    assert out.is_contiguous()
    torch.testing.assert_close(out, fcnseg.patchwise(model, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", ["membrane_like", "batchnorm_gray"])
def test_convolution_on_a_single_channel_map_writes_nhwc_itself(name):
    """No NCHW->NHWC copy after the first convolution of a 1-channel image (its kernel is passed as
    an NHWC-strided view of the parameter, not a copy)."""
    model, x = _inputs(name, torch.float32)
    body = fcnseg.densify(model).body
    copies_checked = []

    class Check(torch.fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            if node.op == "call_function" and node.target.__name__ == "_channels_last" and \
                    node.args[0].op == "call_function" and "conv" in node.args[0].target.__name__:
                source = self.env[node.args[0]]
                assert result.data_ptr() == source.data_ptr(), f"{node.args[0].name} was copied to NHWC"
                copies_checked.append(node.name)
            if node.op == "call_function" and node.target.__name__ == "_kernel_channels_last":
                weight = self.env[node.args[0]]
                assert result.data_ptr() == weight.data_ptr()
            return result

    Check(body).run(fcnseg.densify(model, optimize=False).pad(x))
    assert len(copies_checked) >= 2


class _MallInfo2(__import__("ctypes").Structure):
    _fields_ = [(f, __import__("ctypes").c_size_t) for f in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@pytest.mark.skipif(_glibc() is None or not hasattr(_glibc(), "mallinfo2"), reason="needs glibc >= 2.33")
def test_reuse_freed_memory_serves_large_maps_from_the_heap_and_restores_glibc():
    libc = _glibc()
    libc.mallinfo2.restype = _MallInfo2
    big = 96 * 2 ** 20 // 4                                # above glibc's largest mmap threshold (32 MB)

    def mmapped_bytes_while_holding():
        t = torch.empty(big)
        t.fill_(1.0)
        held = libc.mallinfo2().hblkhd
        del t
        return held

    base = libc.mallinfo2().hblkhd
    assert mmapped_bytes_while_holding() - base >= big * 4            # glibc maps it
    with reuse_freed_memory():
        with reuse_freed_memory():                                       # nested: one setting
            pass
        assert mmapped_bytes_while_holding() - base < big * 4         # still inside: from the heap
    assert mmapped_bytes_while_holding() - base >= big * 4            # restored on leaving
    with reuse_freed_memory(enabled=False):
        assert mmapped_bytes_while_holding() - base >= big * 4


@pytest.mark.slow
def test_compiled_body_equals_patchwise():
    """Optimizations(compile=True): inductor fuses the body; exact up to float32 rounding (minutes on CPU)."""
    model, x = _inputs("batchnorm", torch.float32)
    dense = fcnseg.densify(model, optimize=fcnseg.Optimizations(compile=True))
    out = dense(x)
    assert out.is_contiguous()
    torch.testing.assert_close(out, fcnseg.patchwise(model, x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_wide_fc_convolutions_as_gathered_matrix_products_equal_patchwise(monkeypatch, bias):
    """The gathered-window matrix product (used for wide FC-derived convolutions in inference)
    gives patch-by-patch's scores; forced onto every convolution, in blocks of a few rows."""
    from fcnseg.convert import optimize
    torch.manual_seed(0)
    model = membrane_like(width=4).double().eval()
    if not bias:
        model[7].bias = None
    x = torch.randn(2, 1, 13, 10, dtype=torch.float64)
    ref = fcnseg.patchwise(model, x)
    monkeypatch.setattr(optimize, "GATHERED_MIN_REDUCTION", 1)
    monkeypatch.setattr(optimize, "GATHERED_BLOCK_BYTES", 1)             # one output row per product
    monkeypatch.setattr(optimize, "GATHERED_MAX_OUTPUT_PIXELS", 10 ** 9)
    products = []
    for name in ("mm", "addmm"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, real=real, **k: products.append(1) or real(*a, **k))
    dense = fcnseg.densify(model)
    with torch.inference_mode():
        out = dense(x)
    assert len(products) > 2 * 13
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    products.clear()
    grads_out = dense(x)                                                # with autograd: the plain conv
    assert not products and grads_out.requires_grad
    torch.testing.assert_close(grads_out, ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(NETS))
def test_weight_gradients_summed_in_row_bands_equal_patch_training(monkeypatch, name):
    """The dense convolutions' weight gradients, summed over bands of a few output rows (as large
    training images are, to stay on oneDNN's fast kernels), equal patch-by-patch's gradients of
    the same per-pixel weighting, parameters and image, in float64."""
    from fcnseg.convert import optimize
    model, x = _inputs(name, torch.float64)
    calls = []
    real = optimize._conv_backward
    monkeypatch.setattr(optimize, "_conv_backward", lambda *a: calls.append(a[-1][1]) or real(*a))
    monkeypatch.setattr(optimize, "BAND_UNFOLD_BYTES", 1)              # one output row per band
    grads_match(model, x, model.patch_size)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules()) + \
        sum(isinstance(m, nn.Linear) for m in model.modules())
    assert sum(calls) > convs * 2, "the weight gradients were not split into bands"


def test_wide_convolutions_on_large_outputs_run_nchw_and_equal_patchwise(monkeypatch):
    """Wide convolutions past GATHERED_MAX_OUTPUT_PIXELS run as oneDNN's NCHW kernel and hand
    back an NHWC map: same scores as patch-by-patch, every map still channels_last."""
    from fcnseg.convert import optimize
    torch.manual_seed(0)
    model = membrane_like(width=4).double().eval()
    x = torch.randn(2, 1, 13, 10, dtype=torch.float64)
    ref = fcnseg.patchwise(model, x)
    monkeypatch.setattr(optimize, "GATHERED_MIN_REDUCTION", 1)
    monkeypatch.setattr(optimize, "GATHERED_MAX_OUTPUT_PIXELS", 0)
    layouts = []
    real = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda x, w, *a: layouts.append(x.is_contiguous()) or real(x, w, *a))
    with torch.inference_mode():
        out = fcnseg.densify(model)(x)
    assert sum(layouts) >= 2, "no convolution took the NCHW kernel"
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)


def relu_orders_net():
    """conv -> max pool -> ReLU (as Caffe ports order them) beside conv -> ReLU -> max pool."""
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.MaxPool2d(2, 2), nn.ReLU(),
        nn.Conv2d(4, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 6), nn.ReLU(), nn.Linear(6, 3))
    net.patch_size = (18, 18)
    return net


def test_relus_move_into_their_convolutions_exactly():
    """Every ReLU joins the convolution before it (through the max pool it commutes with); in
    float64 (the unfused fallback) forward and gradients still equal patch-by-patch."""
    torch.manual_seed(0)
    model = relu_orders_net().double().eval()
    body = fcnseg.densify(model).body
    assert sum(n.target is optimize._conv_relu for n in body.graph.nodes) == 3
    assert not any(n.op == "call_module" for n in body.graph.nodes)
    x = torch.randn(2, 1, 11, 9, dtype=torch.float64)
    with torch.inference_mode():
        torch.testing.assert_close(fcnseg.densify(model)(x), fcnseg.patchwise(model, x), rtol=1e-12, atol=1e-12)
    assert grads_match(model, x, model.patch_size) < 1e-9


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN's fused convolution needs mkldnn")
def test_fused_relu_gives_the_unfused_values_bit_for_bit(monkeypatch):
    torch.manual_seed(0)
    model = relu_orders_net().eval()
    dense = fcnseg.densify(model)
    x = torch.randn(2, 1, 21, 19)
    decisions = []
    real = optimize._fuses_relu
    monkeypatch.setattr(optimize, "_fuses_relu", lambda *a: decisions.append(real(*a)) or decisions[-1])
    with torch.inference_mode():
        fused = dense(x)
        assert decisions and all(decisions)
        monkeypatch.setattr(optimize, "_fuses_relu", lambda *a: False)
        unfused = dense(x)
    assert torch.equal(fused, unfused)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN's fused convolution needs mkldnn")
def test_flop_counter_counts_fused_convolutions(monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode
    model = relu_orders_net().eval()
    dense = fcnseg.densify(model)
    x = torch.randn(1, 1, 20, 20)
    counts = []
    for fuse in (True, False):
        if not fuse:
            monkeypatch.setattr(optimize, "_fuses_relu", lambda *a: False)
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            dense(x)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0
