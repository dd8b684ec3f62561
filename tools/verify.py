"""Check on your own model and data that the dense network equals patch-by-patch classification.

    python tools/verify.py                         # the lecture's worked example
    python tools/verify.py model=vgg16 output_stride=32
    python tools/verify.py checkpoint=outputs/demo/best.pt image=photo.png pixels=all
    python tools/verify.py dtype=float32 precision=bf16   # how far bf16 moves scores and labels

Settings: VerifySettings below (conf/verify/verify.yaml repeats its defaults). The reference is
always patch-by-patch in IEEE arithmetic (`dtype`, no TF32); precision=fp32 (the default) checks
exactness against `tolerance`. A reduced precision (tf32, bf16, fp16) is never called exact: the
check reports label agreement and score error and passes on `min_label_agreement`.
"""

import copy
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

import fcnseg
from fcnseg.runtime.precision import precision_context, resolve_precision
from fcnseg.settings import SettingsError, build_section, check_choice, check_positive, check_precision


@dataclass
class VerifySettings:
    model: str = "toy"               # a zoo name (fcnseg.zoo.names())
    checkpoint: Any = None           # or a checkpoint written by tools/train.py (overrides model)
    num_classes: int = 7
    in_channels: int = 3
    width_mult: float = 0.25         # zoo nets at a fraction of their width, so the reference finishes quickly
    image: Any = None                # an image file; None: a random image of `size`
    size: tuple = (48, 40)           # H, W of the random image
    pixels: str = "sample"           # sample (random pixels + every border pixel) or all
    sample: int = 64
    output_stride: int = 1
    head: Any = None                 # several outputs: check only this one (name or index); None: every output
    pad_mode: str = "constant"       # the library's default; a checkpoint's own rule wins
    pad_value: float = 0.0
    dtype: str = "float64"           # the model's and the reference's dtype: float64 shows the method is exact
    precision: str = "fp32"          # the dense pass: fp32 (IEEE) | tf32 | bf16 | fp16 | auto (reduced: float32)
    tolerance: Any = None            # relative, for fp32; None: 1e-9 in float64, 1e-4 in float32
    min_label_agreement: float = 0.99  # a reduced precision passes when this share of labels agrees
    batch_size: int = 64             # patches per reference batch
    seed: int = 0

    def __post_init__(self):
        check_choice("pixels", self.pixels, ("sample", "all"))
        check_choice("pad_mode", self.pad_mode, fcnseg.ops.PAD_MODES)
        check_choice("dtype", self.dtype, ("float64", "float32"))
        check_precision("precision", self.precision)
        for key in ("num_classes", "in_channels", "sample", "output_stride", "batch_size"):
            check_positive(key, getattr(self, key))
        self.size = tuple(self.size)
        if not 0.0 <= float(self.min_label_agreement) <= 1.0:
            raise SettingsError("min_label_agreement", f"must be in [0, 1], got {self.min_label_agreement}")


def settings_from(cfg) -> VerifySettings:
    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    values.pop("hydra", None)
    return build_section("", VerifySettings, values)


def load_model(cfg: VerifySettings):
    if cfg.checkpoint:
        from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
        model, info = model_from_checkpoint(load_checkpoint(cfg.checkpoint))
        return model, info.get("in_channels", cfg.in_channels), info.get("pad_mode", cfg.pad_mode), info
    from fcnseg import zoo
    model = zoo.create(cfg.model, num_classes=cfg.num_classes, in_channels=cfg.in_channels,
                       width_mult=cfg.width_mult, padding="valid")
    return model, cfg.in_channels, cfg.pad_mode, {}


def load_input(cfg: VerifySettings, in_channels, info, dtype):
    if cfg.image is None:
        g = torch.Generator().manual_seed(cfg.seed)
        return torch.randn(1, in_channels, *cfg.size, generator=g, dtype=dtype)
    from fcnseg.data.base import default_mean_std
    from fcnseg.data.io import prepare_image, read_image
    mean, std = default_mean_std(in_channels)          # the library's default, as training uses
    mean, std = info.get("mean", mean), info.get("std", std)
    return prepare_image(read_image(cfg.image), in_channels, mean, std).unsqueeze(0).to(dtype)


def verify(cfg) -> bool:
    cfg = cfg if isinstance(cfg, VerifySettings) else settings_from(cfg)
    torch.manual_seed(cfg.seed)
    dtype = getattr(torch, cfg.dtype)
    p = resolve_precision(cfg.precision, "cpu")
    if not p.exact and dtype != torch.float32:
        raise SettingsError("precision", f"{p.name} runs a float32 model; set dtype=float32 (the reference "
                            "then runs in float64)")
    model, c, pad_mode, info = load_model(cfg)
    model = model.to(dtype).eval()
    if cfg.head is not None:                    # several outputs: check only this one
        from fcnseg.heads import OneHead
        model = OneHead(model, cfg.head)
    x = load_input(cfg, c, info, dtype)
    n, _, h, w = x.shape
    s = cfg.output_stride
    dense = fcnseg.densify(model, output_stride=s, pad_mode=pad_mode, pad_value=cfg.pad_value, precision=p.name)
    geo = dense.geometry
    print(f"model {cfg.checkpoint or cfg.model}: patch {geo.patch_size}, total stride {geo.total_stride}, "
          f"receptive field {geo.receptive_field}, {geo.num_classes} classes, FLOP ratio {geo.flop_ratio:.0f}x")
    # sampled: random pixels of the output grid plus its first and last rows and columns
    pixels = fcnseg.grid_pixels(h, w, s) if cfg.pixels == "all" else \
        fcnseg.random_grid_pixels(h, w, s, cfg.sample, seed=cfg.seed)
    with torch.inference_mode():
        if p.exact:
            with precision_context("fp32", x.device):
                result = fcnseg.compare_dense(dense, model, x, pixels, batch_size=cfg.batch_size)
        else:
            result = compare_reduced(dense, model, x, pixels, cfg.batch_size)
    per_pixel_patch = result.patch_seconds / max(result.pixels, 1)
    n_out = -(-h // s) * -(-w // s)
    print(f"image {h}x{w}, {result.pixels} pixels compared (every border pixel of the output grid included)")
    print(f"dense: {result.dense_seconds * 1e3:.1f} ms for all {n_out} outputs in {p.describe()}; patch-by-patch: "
          f"{per_pixel_patch * 1e3:.3f} ms per pixel -> {per_pixel_patch * n_out:.2f} s for all, "
          f"{per_pixel_patch * n_out / max(result.dense_seconds, 1e-9):.0f}x slower")
    if p.exact:
        tol = cfg.tolerance if cfg.tolerance is not None else (1e-9 if dtype == torch.float64 else 1e-4)
        print(f"max abs error {result.max_abs:.3g}, max relative error {result.max_rel:.3g} (tolerance {tol:g}), "
              f"labels agree at {100 * result.label_agreement:.2f}% of pixels")
        ok = result.ok(tol)
        print("PASS" if ok else "FAIL")
        return ok
    ok = result.label_agreement >= cfg.min_label_agreement
    print(f"{p.name} is reduced precision, not exact: labels agree with the float64 reference at "
          f"{100 * result.label_agreement:.2f}% of pixels ({result.label_mismatches} differ; "
          f"{100 * cfg.min_label_agreement:.2f}% required), max score error {result.max_rel:.3g} relative, "
          f"{result.max_abs:.3g} absolute")
    print(f"{'PASS' if ok else 'FAIL'} (label agreement, {p.name})")
    return ok


def compare_reduced(dense, model, x, pixels, batch_size):
    """The dense pass in its reduced precision against patch-by-patch in IEEE float64."""
    import time

    from torch.utils._pytree import tree_map

    from fcnseg.patch import pixel_index
    n, _, h, w = x.shape
    s = dense.output_stride
    idx = pixel_index(pixels, h, w)
    t0 = time.perf_counter()
    out = dense(x)
    seconds = time.perf_counter() - t0
    scores = tree_map(lambda t: t[:, :, idx[:, 0] // s[0], idx[:, 1] // s[1]].double(), out)
    reference = copy.deepcopy(model).double()
    with precision_context("fp32", x.device):
        result = fcnseg.compare_dense(dense, reference, x.double(), idx, dense_scores=scores, batch_size=batch_size)
    return dataclasses.replace(result, dense_seconds=seconds)


@hydra.main(config_path="../conf/verify", config_name="verify", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        settings = settings_from(cfg)
    except SettingsError as e:
        sys.exit(f"error: {e}")
    if settings.image is not None and not Path(settings.image).is_file():
        sys.exit(f"image not found: {settings.image}")
    try:
        sys.exit(0 if verify(settings) else 1)
    except SettingsError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
