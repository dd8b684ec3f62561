"""Check on your own model and data that the dense network equals patch-by-patch classification.

    python tools/verify.py                         # the lecture's worked example
    python tools/verify.py model=vgg16 output_stride=32
    python tools/verify.py checkpoint=outputs/demo/best.pt image=photo.png pixels=all
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

import fcnseg
from fcnseg.patch import pixel_index


def load_model(cfg):
    if cfg.checkpoint:
        from fcnseg.models import load_checkpoint, model_from_checkpoint
        model, info = model_from_checkpoint(load_checkpoint(cfg.checkpoint))
        return model, info.get("in_channels", cfg.in_channels), info.get("pad_mode", cfg.pad_mode), info
    from fcnseg import zoo
    model = zoo.create(cfg.model, num_classes=cfg.num_classes, in_channels=cfg.in_channels,
                       width_mult=cfg.width_mult, padding="valid")
    return model, cfg.in_channels, cfg.pad_mode, {}


def load_input(cfg, in_channels, info, dtype):
    if cfg.image is None:
        g = torch.Generator().manual_seed(cfg.seed)
        return torch.randn(1, in_channels, *cfg.size, generator=g, dtype=dtype)
    from fcnseg.data.io import prepare_image, read_image
    mean = info.get("mean", [0.5] * in_channels)
    std = info.get("std", [0.25] * in_channels)
    return prepare_image(read_image(cfg.image), in_channels, mean, std).unsqueeze(0).to(dtype)


def choose_pixels(cfg, h, w, s):
    grid = torch.zeros(h, w, dtype=torch.bool)
    if cfg.pixels == "all":
        grid[::s, ::s] = True
        return grid
    border = torch.zeros(h, w, dtype=torch.bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    g = torch.Generator().manual_seed(cfg.seed)
    pick = torch.zeros(h * w, dtype=torch.bool)
    pick[torch.randperm(h * w, generator=g)[: cfg.sample]] = True
    grid = border | pick.reshape(h, w)
    on_grid = torch.zeros(h, w, dtype=torch.bool)
    on_grid[::s, ::s] = True
    # with an output stride, only grid pixels have a dense output; keep the border rows of the grid
    return grid & on_grid | (on_grid & (torch.arange(h)[:, None] >= h - s)) | (on_grid & (torch.arange(w) >= w - s))


def verify(cfg) -> bool:
    torch.manual_seed(cfg.seed)
    dtype = getattr(torch, cfg.dtype)
    model, c, pad_mode, info = load_model(cfg)
    model = model.to(dtype).eval()
    x = load_input(cfg, c, info, dtype)
    n, _, h, w = x.shape
    s = cfg.output_stride
    dense = fcnseg.densify(model, output_stride=s, pad_mode=pad_mode, pad_value=cfg.pad_value)
    geo = dense.geometry
    print(f"model {cfg.checkpoint or cfg.model}: patch {geo.patch_size}, total stride {geo.total_stride}, "
          f"receptive field {geo.receptive_field}, {geo.num_classes} classes, FLOP ratio {geo.flop_ratio:.0f}x")
    mask = choose_pixels(cfg, h, w, s)
    idx = pixel_index(mask, h, w)
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = dense(x)
        t_dense = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = fcnseg.patchwise(model, x, pad_mode=pad_mode, pad_value=cfg.pad_value, pixels=mask,
                               batch_size=cfg.batch_size)
        t_patch = time.perf_counter() - t0
    a = out[:, :, idx[:, 0] // s, idx[:, 1] // s]
    b = ref[:, :, idx[:, 0], idx[:, 1]]
    abs_err = (a - b).abs().max().item()
    rel_err = abs_err / max(b.abs().max().item(), 1e-30)
    tol = cfg.tolerance if cfg.tolerance is not None else (1e-9 if dtype == torch.float64 else 1e-4)
    labels_agree = (a.argmax(1) == b.argmax(1)).float().mean().item()
    per_pixel_patch = t_patch / len(idx)
    n_out = out.shape[-1] * out.shape[-2]
    print(f"image {h}x{w}, {len(idx)} pixels compared (every border pixel of the output grid included)")
    print(f"max abs error {abs_err:.3g}, max relative error {rel_err:.3g} (tolerance {tol:g}), "
          f"labels agree at {100 * labels_agree:.2f}% of pixels")
    print(f"dense: {t_dense * 1e3:.1f} ms for all {n_out} outputs; patch-by-patch: {per_pixel_patch * 1e3:.3f} ms "
          f"per pixel -> {per_pixel_patch * n_out:.2f} s for all, {per_pixel_patch * n_out / t_dense:.0f}x slower")
    ok = rel_err <= tol
    print("PASS" if ok else "FAIL")
    return ok


@hydra.main(config_path="../conf/verify", config_name="verify", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.image is not None and not Path(cfg.image).is_file():
        sys.exit(f"image not found: {cfg.image}")
    sys.exit(0 if verify(cfg) else 1)


if __name__ == "__main__":
    main()
