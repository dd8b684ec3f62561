"""Check on your own model and data that the dense network equals patch-by-patch classification.

    python tools/verify.py                         # the lecture's worked example
    python tools/verify.py model=vgg16 output_stride=32
    python tools/verify.py checkpoint=outputs/demo/best.pt image=photo.png pixels=all
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

import fcnseg


def load_model(cfg):
    if cfg.checkpoint:
        from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
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


def verify(cfg) -> bool:
    torch.manual_seed(cfg.seed)
    dtype = getattr(torch, cfg.dtype)
    model, c, pad_mode, info = load_model(cfg)
    model = model.to(dtype).eval()
    if cfg.head is not None:                    # several outputs: check only this one
        from fcnseg.heads import OneHead
        model = OneHead(model, cfg.head)
    x = load_input(cfg, c, info, dtype)
    n, _, h, w = x.shape
    s = cfg.output_stride
    dense = fcnseg.densify(model, output_stride=s, pad_mode=pad_mode, pad_value=cfg.pad_value)
    geo = dense.geometry
    print(f"model {cfg.checkpoint or cfg.model}: patch {geo.patch_size}, total stride {geo.total_stride}, "
          f"receptive field {geo.receptive_field}, {geo.num_classes} classes, FLOP ratio {geo.flop_ratio:.0f}x")
    # sampled: random pixels of the output grid plus its first and last rows and columns
    pixels = fcnseg.grid_pixels(h, w, s) if cfg.pixels == "all" else \
        fcnseg.sample_pixels(h, w, s, cfg.sample, seed=cfg.seed)
    with torch.inference_mode():
        result = fcnseg.compare_dense(dense, model, x, pixels, batch_size=cfg.batch_size)
    tol = cfg.tolerance if cfg.tolerance is not None else (1e-9 if dtype == torch.float64 else 1e-4)
    per_pixel_patch = result.patch_seconds / max(result.pixels, 1)
    n_out = -(-h // s) * -(-w // s)
    print(f"image {h}x{w}, {result.pixels} pixels compared (every border pixel of the output grid included)")
    print(f"max abs error {result.max_abs:.3g}, max relative error {result.max_rel:.3g} (tolerance {tol:g}), "
          f"labels agree at {100 * result.label_agreement:.2f}% of pixels")
    print(f"dense: {result.dense_seconds * 1e3:.1f} ms for all {n_out} outputs; patch-by-patch: "
          f"{per_pixel_patch * 1e3:.3f} ms per pixel -> {per_pixel_patch * n_out:.2f} s for all, "
          f"{per_pixel_patch * n_out / max(result.dense_seconds, 1e-9):.0f}x slower")
    ok = result.ok(tol)
    print("PASS" if ok else "FAIL")
    return ok


@hydra.main(config_path="../conf/verify", config_name="verify", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.image is not None and not Path(cfg.image).is_file():
        sys.exit(f"image not found: {cfg.image}")
    sys.exit(0 if verify(cfg) else 1)


if __name__ == "__main__":
    main()
