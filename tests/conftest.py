"""Shared checks: the dense network against the independent patch-by-patch reference."""
import pytest
import torch

import fcnseg


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute difference relative to the reference's largest magnitude."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def check_dense(model, x, patch_size=None, *, output_stride=1, pad_mode="constant", pad_value=0.0, tol=1e-9,
                pixels=None):
    """Dense output == patchwise at every grid pixel (or the given pixels); returns the relative error."""
    dense = fcnseg.densify(model, patch_size, output_stride=output_stride, pad_mode=pad_mode, pad_value=pad_value)
    with torch.no_grad():
        got = dense(x)
        n, _, h, w = x.shape
        s = output_stride
        assert got.shape[-2:] == (-(-h // s), -(-w // s))
        if pixels is None:
            grid = torch.zeros(h, w, dtype=torch.bool)
            grid[::s, ::s] = True
            pixels = grid
        ref = fcnseg.patchwise(model, x, patch_size, pad_mode=pad_mode, pad_value=pad_value, pixels=pixels,
                               batch_size=512)
    idx = fcnseg.patch.pixel_index(pixels, h, w)
    assert (idx % s == 0).all(), "pixels must lie on the output grid"
    a = got[:, :, idx[:, 0] // s, idx[:, 1] // s]
    b = ref[:, :, idx[:, 0], idx[:, 1]]
    assert a.shape[1] == b.shape[1]
    err = rel_err(a, b)
    assert err <= tol, f"dense differs from patch-by-patch: relative error {err:.3g} > {tol:g}"
    return err


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
