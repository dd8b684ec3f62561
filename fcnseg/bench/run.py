"""The benchmark run: every method on every configured network and size, in one process.

    python tools/bench.py            # full run (about 15 minutes on 2 CPU cores)
    python tools/bench.py --quick    # 1-2 minute smoke run into results/quick/

For each network and image size, in one run: batched patch-by-patch (NCHW and channels_last),
the hand conversion, shift-and-stitch, fcnseg.densify with optimize=False and by default
(forward), forward+backward of a masked per-pixel loss on k sampled pixels against
patch-by-patch training on the same pixels, a per-node profile of the default dense graph, and
4096x4096 through the default tiled inference path. Every exact row runs in IEEE float32
(no TF32 on CUDA, strict oneDNN); each reduced precision of the `precision` setting (bf16 by
default) adds the default dense network and the faster patch-by-patch baseline in that
precision, compared with the float32 scores by label agreement and score error.
Writes <out-dir>/bench.json, <out-dir>/bench.png and the Markdown report (docs/benchmarks.md).
Costs that are linear in the number of patches or shifts are timed on a random sample and
scaled; the report marks them.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fcnseg import runtime
from fcnseg.convert.options import Optimizations
from fcnseg.dense import densify
from fcnseg.patch import patchwise
from fcnseg.runtime.precision import cpu_native_bf16, float32_math_state, precision_context
from fcnseg.settings import build_section

from .measure import Timer, load_average, machine, matmul_rates, release_freed_memory
from .methods import (
    HandConversionError,
    HandDense,
    ShiftAndStitch,
    build_network,
    channels_last_copy,
    dense_networks,
    dense_train_step,
    hand_convert,
    patch_batch_size,
    patch_train_step,
    random_pixel_coords,
)
from .plot import write_plot
from .profile import profile_dense
from .report import write_markdown
from .settings import BenchSettings


@dataclass(frozen=True)
class NetRun:
    name: str
    width: float
    sides: tuple           # forward image sides
    train_sides: tuple = ()
    output_stride: int = 1
    profile_sides: tuple = ()
    patch_layouts: tuple = ("nchw", "channels_last")   # batched patch-by-patch baselines to time
    plain: bool = True                                 # also time densify(optimize=False)


@dataclass(frozen=True)
class Config:
    nets: tuple
    ks: tuple                                   # pixels per training step ("all": every pixel)
    repeats: int
    budget_s: float                             # stop repeating a method after this many seconds
    patch_seconds: float                        # time spent on each sampled (scaled) method
    tiling: tuple                               # (net, image side, untiled reference side)
    profile_repeats: int = 2


# Widths and sizes of the performance targets: the membrane net at 256-1024 (training at 512), the
# zoo's networks at width 1.0 at the classic segmentation settings.
FULL = Config(
    nets=(NetRun("membrane95", 1.0, (256, 512, 1024), (512,), 1, (256, 512, 1024)),
          # the zoo nets: channels_last patch-by-patch only (the faster layout on every net measured),
          # and no plain graph for MobileNet (4.5x slower than the default: minutes per call)
          NetRun("vgg16", 1.0, (512,), (), 8, (512,), ("channels_last",)),
          NetRun("resnet50", 1.0, (512,), (), 8, (512,), ("channels_last",)),
          NetRun("mobilenet_v2", 1.0, (256,), (), 1, (256,), ("channels_last",), plain=False)),
    ks=("all",), repeats=3, budget_s=6.0, patch_seconds=2.0, tiling=("membrane95", 4096, 1024),
    profile_repeats=1)
QUICK = Config(
    nets=(NetRun("membrane95", 1.0, (64, 128), (64,), 1, (64,)),
          NetRun("lenet5", 1.0, (64,), (), 1, ())),
    ks=(64, "all"), repeats=2, budget_s=1.0, patch_seconds=0.2, tiling=("lenet5", 384, 128),
    profile_repeats=1)
MAX_SAMPLE = 2048         # patches per sample: enough for a stable per-patch time on small nets


def record(timing, scale=1.0, **extra) -> dict:
    return {"time_s": timing.median * scale, "times_s": [t * scale for t in timing.times],
            "peak_mb": timing.peak_bytes / 2 ** 20, **extra}


def max_diff(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def score_errors(got, ref) -> dict:
    """A reduced-precision result against the IEEE float32 one: labels and scores."""
    err = max_diff(got, ref)
    return {"label_agreement": float((got.argmax(1) == ref.argmax(1)).double().mean()),
            "max_abs_err": err, "max_rel_err": err / max(float(ref.double().abs().max()), 1e-30)}


def sample_size(per_patch_s: float, batch: int, available: int, seconds: float) -> int:
    """Patches to time so that the sample takes about `seconds`, in whole batches, at least one
    batch and at most MAX_SAMPLE (or every available pixel)."""
    n = int(seconds / max(per_patch_s, 1e-9)) // batch * batch
    return max(min(batch, available), min(available, MAX_SAMPLE, n))


def output_pixels(side: int, stride: int) -> int:
    return (-(-side // stride)) ** 2


def bench_patch(models, x, ref, stride, cfg, timer) -> dict:
    """Batched patch-by-patch with each of `models` ({key: classifier}); linear in the pixels, so a
    random sample of output pixels is timed and scaled. One batch warms up and calibrates; a
    larger sample is timed only if one batch takes less than `cfg.patch_seconds`."""
    side, c = x.shape[-1], x.shape[1]
    out = {}
    for key, model in models.items():
        bs = patch_batch_size(model.patch_size, c, x.device, model)
        all_pix = random_pixel_coords(side, side, output_pixels(side, stride), seed=9, stride=stride).to(x.device)
        scores = {}

        def run(pix, model=model, bs=bs, scores=scores):
            scores["out"] = patchwise(model, x, pixels=pix, batch_size=bs)[..., pix[:, 0], pix[:, 1]]

        pix = all_pix[:bs]
        with timer.steady():             # every timed batch runs on the heap one batch has filled
            peak = timer(lambda pix=pix: run(pix), warmup=False).peak_bytes  # warm-up on a trimmed heap: its peak
            t = timer(lambda pix=pix: run(pix), warmup=False)                 # calibration, in steady state
            n = sample_size(t.median / len(pix), bs, len(all_pix), cfg.patch_seconds)
            if n > len(pix):
                pix = all_pix[:n]
                t = timer(lambda pix=pix: run(pix), warmup=False)
        t.peak_bytes = peak
        out[key] = record(t, output_pixels(side, stride) / len(pix), sampled=len(pix), batch_size=bs,
                          max_abs_diff=max_diff(scores["out"], ref[..., pix[:, 0] // stride, pix[:, 1] // stride]))
    return out


def bench_forward(model, c, side, stride, cfg, timer, device, compile_body, spec, reduced=()):
    """All forward methods on one (1, c, side, side) image; returns ({method: record}, geometry)."""
    torch.manual_seed(0)
    x = torch.randn(1, c, side, side, device=device)
    nets = dense_networks(model, stride)
    if not spec.plain:
        del nets["densify_plain"]
    dense = nets["densify"]
    out = {}
    with torch.inference_mode():
        ref = dense(x)
        methods = dict(nets)
        if compile_body:
            methods["densify_compiled"] = densify(model, output_stride=stride,
                                                         optimize=Optimizations(compile=True))
            methods["densify_compiled"](x)                   # compile outside the timing
        if stride == 1:
            try:
                methods["hand"] = HandDense(hand_convert(model, model.patch_size, c), model.patch_size).to(device)
            except HandConversionError as exc:
                out["hand"] = {"time_s": None, "why": str(exc)}
        else:
            out["hand"] = {"time_s": None, "why": "the hand conversion is the output-stride-1 network"}
        # the exact dense methods are timed round-robin, so their ratios share the machine's load
        timings = timer.compare({k: (lambda net=net: net(x)) for k, net in methods.items()},
                                count_flops={"densify"})
        out["densify"] = record(timings["densify"], executed_flops=timings["densify"].flops)
        for key, net in methods.items():
            if key != "densify":
                out[key] = record(timings[key], max_abs_diff=max_diff(net(x), ref))
        if stride == 1:
            # shift-and-stitch: every shift costs the same; time a spread-out sample of them
            ss = ShiftAndStitch(model)
            all_shifts = ss.shifts
            n = max(1, min(len(all_shifts), round(cfg.patch_seconds / max(1e-3, out["densify"]["time_s"]))))
            shifts = all_shifts[:: max(1, len(all_shifts) // n)][:n]
            t = timer(lambda: ss.run_shifts(x, shifts))
            part = ss.run_shifts(x, shifts)
            a, b = shifts[-1]
            diff = max_diff(part[..., a :: ss.s[0], b :: ss.s[1]], ref[..., a :: ss.s[0], b :: ss.s[1]])
            out["shift_stitch"] = record(t, len(all_shifts) / len(shifts), shifts=len(all_shifts),
                                         sampled=len(shifts), max_abs_diff=diff)
        layouts = {"patch_nchw": model if "nchw" in spec.patch_layouts else None,
                   "patch_cl": channels_last_copy(model) if "channels_last" in spec.patch_layouts else None}
        patch = bench_patch({k: m for k, m in layouts.items() if m is not None}, x, ref, stride, cfg, timer)
        out.update(patch)
        if reduced:
            fastest = min(patch, key=lambda k: patch[k]["time_s"])
            out["reduced"] = bench_reduced(dense, fastest, layouts[fastest], x, ref, stride, cfg, timer, device,
                                           reduced)
    return out, dense.geometry


def bench_reduced(dense, layout, patch_model, x, ref, stride, cfg, timer, device, precisions) -> dict:
    """The default dense network and the faster patch baseline in each reduced precision, with
    their scores against the IEEE float32 ones (`ref`) of the same run."""
    out = {}
    for name in precisions:
        with precision_context(name, device) as p:
            t = timer(lambda: dense(x))
            got = dense(x).float()
            patch = bench_patch({layout: patch_model}, x, ref, stride, cfg, timer)[layout]
            math = float32_math_state()
        out[p.name if name != "auto" else f"auto ({p.name})"] = record(
            t, precision=p.name, float32_math=math, **score_errors(got, ref), patch={**patch, "layout": layout})
    return out


def bench_train(model, c, side, cfg, timer, device):
    """Forward+backward of a masked loss on k pixels: the default dense network vs patch training
    (the faster of NCHW and channels_last)."""
    torch.manual_seed(1)
    x = torch.randn(1, c, side, side, device=device)
    dense = densify(model)
    geo = dense.geometry
    bs = patch_batch_size(model.patch_size, c, device, model)
    patch = {}
    all_pix = random_pixel_coords(side, side, side * side, seed=2).to(device)
    all_tgt = torch.randint(0, geo.num_classes, (len(all_pix),), device=device)
    for key, net in (("nchw", model), ("channels_last", channels_last_copy(model))):
        # patch training costs k times one patch's forward+backward: time a sample, scale to each k
        pix, tgt = all_pix[:bs], all_tgt[:bs]
        with timer.steady():             # as a training run: each batch on the pages of the last
            patch_train_step(net, x, pix, tgt, bs)                          # warm-up
            t = timer(lambda net=net, pix=pix, tgt=tgt: patch_train_step(net, x, pix, tgt, bs), warmup=False)
            n = sample_size(t.median / len(pix), bs, len(all_pix), cfg.patch_seconds)
            if n > len(pix):
                pix, tgt = all_pix[:n], all_tgt[:n]
                t = timer(lambda net=net, pix=pix, tgt=tgt: patch_train_step(net, x, pix, tgt, bs),
                          warmup=False)
        patch[key] = (t, len(pix))
    layout = min(patch, key=lambda k: patch[k][0].median / patch[k][1])
    t_patch, n_pix = patch[layout]
    rows = []
    for k in cfg.ks:
        k = side * side if k == "all" else k
        if k > side * side:
            continue
        pk = random_pixel_coords(side, side, k, seed=3).to(device)
        tk = torch.randint(0, geo.num_classes, (k,), device=device)
        t_dense = timer(lambda pk=pk, tk=tk: dense_train_step(dense, model, x, pk, tk))
        rows.append({"k": k, "dense": record(t_dense),
                     "patch": record(t_patch, k / n_pix, sampled=n_pix, batch_size=bs, layout=layout)})
    return rows


def bench_tiling(name, side, reference_side, device, timer):
    """Peak memory and per-pixel time of a side x side image through the default inference path
    (fcnseg.infer tiling, tile size chosen from the default memory budget), against an untiled
    reference_side image in the same run."""
    from fcnseg.infer.runner import InferenceSettings
    from fcnseg.infer.tiling import auto_tile_size, predict_tiled
    model, c, _ = build_network(name, 1.0)
    dense = densify(model.to(device))
    budget = InferenceSettings.memory_mb          # the default inference budget
    tile = auto_tile_size(dense, c, budget)
    small = torch.randn(c, 256, 256, device=device)                  # tiled == untiled
    with torch.inference_mode():
        untiled = dense(small[None])[0]
    diff = max_diff(predict_tiled(dense, small, 64).scores.to(untiled.device), untiled)
    ref_image = torch.randn(1, c, reference_side, reference_side, device=device)
    with torch.inference_mode():
        t_ref = timer(lambda: dense(ref_image))         # steady state, as each tile below after the first
    image = torch.randn(c, side, side)
    t = timer(lambda: predict_tiled(dense, image, tile, return_scores=False), warmup=False)
    return {"net": name, "side": side, "tile": tile, "memory_mb_budget": budget, "time_s": t.median,
            "peak_mb": t.peak_bytes / 2 ** 20, "input_mb": image.numel() * 4 / 2 ** 20,
            "reference_side": reference_side, "reference_time_s": t_ref.median, "max_abs_diff_256": diff}


def bench_profile(model, c, side, stride, repeats, device) -> dict:
    torch.manual_seed(0)
    x = torch.randn(1, c, side, side, device=device)
    rows = profile_dense(densify(model, output_stride=stride), x, repeats)
    return {"side": side, "output_stride": stride, "nodes": [r.as_dict() for r in rows]}


def parse_settings(argv=None) -> BenchSettings:
    """tools/bench.py's command line as BenchSettings (conf/bench.yaml lists the defaults)."""
    d = BenchSettings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small smoke run (1-2 minutes) into results/quick")
    ap.add_argument("--out-dir", help="where bench.json and bench.png go (default results/, "
                    "quick: results/quick/, on CUDA results/cuda/)")
    ap.add_argument("--docs", help="Markdown report (default docs/benchmarks.md; quick or "
                    "CUDA: <out-dir>/benchmarks.md)")
    ap.add_argument("--nets", nargs="+", help="only these networks (names from the config)")
    ap.add_argument("--sizes", nargs="+", type=int, help="override the image sides")
    ap.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:<index>")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads for the whole run")
    ap.add_argument("--precision", nargs="+", default=list(d.precision),
                    help="fp32 (the IEEE rows, always) and the reduced precisions timed beside them: "
                    "bf16, fp16 or tf32 (CUDA), auto (default: %(default)s)")
    ap.add_argument("--compile", action="store_true", help="also time optimize=Optimizations(compile=True)")
    ap.add_argument("--no-tiling", dest="tiling", action="store_false")
    ap.add_argument("--tiling-only", action="store_true", help="only the tiled-inference measurement (with --add: "
                    "into an existing results file)")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--add", action="store_true", help="merge into an existing <out-dir>/bench.json: its "
                    "networks of the same name (and the tiling, if measured) are replaced, the others kept")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report and plot from an "
                    "existing <out-dir>/bench.json without measuring anything")
    return build_section("", BenchSettings, vars(ap.parse_args(argv)))


def main(argv=None, *, root: Path | None = None):
    """The command line of tools/bench.py; root: the project (results/ and docs/ go there)."""
    args = parse_settings(argv)
    root = Path.cwd() if root is None else Path(root)
    cfg = QUICK if args.quick else FULL
    device = runtime.pick_device(args.device)
    default_dir = "quick" if args.quick else ("cuda" if device.type == "cuda" else "")
    out_dir = Path(args.out_dir) if args.out_dir else root / "results" / default_dir
    docs = Path(args.docs) if args.docs else (out_dir / "benchmarks.md" if default_dir
                                               else root / "docs" / "benchmarks.md")
    if args.report_only:
        result = json.loads((out_dir / "bench.json").read_text())
        write_outputs(result, out_dir, docs, write_json=False)
        return result
    with precision_context("fp32", device):        # every exact row in IEEE float32
        return run(args, cfg, device, out_dir, docs)


def precision_record(args, device) -> dict:
    """What the results file says about precision: the exact rows' float32 math (TF32 state
    included), the reduced precisions timed, and whether bf16 is native on this device."""
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_native_bf16()
    return {"exact": "fp32", "float32_math": float32_math_state(), "reduced": list(args.reduced),
            "native": {"bf16": bool(native)}}


def run(args: BenchSettings, cfg: Config, device, out_dir: Path, docs: Path) -> dict:
    if device.type == "cuda":
        # one shape per row and many repeats: autotuning pays off (never cudnn.deterministic:
        # deterministic dilated convolutions crawl)
        torch.backends.cudnn.benchmark = True
    if args.threads:
        torch.set_num_threads(args.threads)
    release_freed_memory()
    timer = Timer(device, cfg.repeats, cfg.budget_s)
    started = time.time()
    result = {"machine": machine(device), "mode": "quick" if args.quick else "full",
              "precision": precision_record(args, device),
              "load_average_start": load_average(), "matmul_gflops": [matmul_rates(device)], "nets": []}
    print(f"matmul GFLOP/s: {result['matmul_gflops'][0]}; precision {result['precision']}", flush=True)
    base = json.loads((out_dir / "bench.json").read_text()) if args.add and (out_dir / "bench.json").exists() \
        else None
    for spec in cfg.nets:
        if args.tiling_only or (args.nets and spec.name not in args.nets):
            continue
        model, c, source = build_network(spec.name, spec.width)
        model.to(device)
        entry = {"name": spec.name, "width": spec.width, "source": source, "in_channels": c,
                 "matmul_gflops": matmul_rates(device),           # this network's own ceiling, just before it
                 "output_stride": spec.output_stride, "patch_size": list(model.patch_size), "runs": [],
                 "profiles": []}
        for side in args.sizes or spec.sides:
            t0 = time.time()
            fwd, geo = bench_forward(model, c, side, spec.output_stride, cfg, timer, device, args.compile, spec,
                                     args.reduced)
            train = bench_train(model, c, side, cfg, timer, device) if side in spec.train_sides else []
            entry.update(total_stride=list(geo.total_stride), flops_patch=geo.flops_patch,
                         flops_dense_per_pixel=geo.flops_dense_per_pixel, flop_ratio=geo.flop_ratio)
            entry["runs"].append({"side": side, "forward": fwd, "train": train, "load_average": load_average()})
            best = fwd["densify"]["time_s"]
            patch = min(fwd[k]["time_s"] for k in ("patch_nchw", "patch_cl") if k in fwd)
            plain = fwd.get("densify_plain", {}).get("time_s", float("nan"))
            reduced = "".join(f", {k} {r['time_s'] * 1e3:.1f} ms (labels {100 * r['label_agreement']:.2f}%)"
                              for k, r in fwd.get("reduced", {}).items())
            print(f"{spec.name:12} {side:5}: densify {best * 1e3:9.1f} ms, plain {plain * 1e3:9.1f} ms, "
                  f"patch {patch:9.1f} s ({patch / best:6.0f}x){reduced} [{time.time() - t0:.0f} s]", flush=True)
        if args.profile:
            for side in args.sizes or spec.profile_sides:
                entry["profiles"].append(bench_profile(model, c, side, spec.output_stride, cfg.profile_repeats,
                                                       device))
                print(f"{spec.name:12} {side:5}: profiled", flush=True)
        result["nets"].append(entry)
        # a partial results file after every network: a run cut short still leaves its numbers
        write_outputs(merged({**result, "load_average_end": load_average(), "wall_s": time.time() - started,
                              "partial": True}, base), out_dir, docs)
    if args.tiling and (not args.nets or cfg.tiling[0] in args.nets):
        name, side, reference_side = cfg.tiling
        result["tiling"] = bench_tiling(name, side, reference_side, device, Timer(device, 1, 0.0))
        print(f"tiling: {result['tiling']}", flush=True)
    result["matmul_gflops"].append(matmul_rates(device))
    result["load_average_end"] = load_average()
    result["wall_s"] = time.time() - started
    result = merged(result, base)
    write_outputs(result, out_dir, docs)
    return result


def merged(result: dict, base: dict | None) -> dict:
    """`result` merged into an earlier results file `base` (--add): same-name networks replaced."""
    if base is None:
        return result
    names = {n["name"] for n in result["nets"]}
    out = {**base, "nets": [n for n in base["nets"] if n["name"] not in names] + result["nets"],
           "runs_merged": base.get("runs_merged", [{k: base.get(k) for k in ("load_average_start",
                                                                             "load_average_end", "wall_s")}])
           + [{k: result.get(k) for k in ("load_average_start", "load_average_end", "wall_s")}],
           "load_average_end": result["load_average_end"], "wall_s": base.get("wall_s", 0) + result["wall_s"],
           "matmul_gflops": base["matmul_gflops"] + result["matmul_gflops"],
           "precision": result.get("precision", base.get("precision"))}
    if "tiling" in result:
        out["tiling"] = result["tiling"]
    if result.get("partial"):
        out["partial"] = True
    else:
        out.pop("partial", None)
    return out


def write_outputs(result, out_dir: Path, docs: Path, write_json: bool = True) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if write_json:
        runtime.write_text_atomic(out_dir / "bench.json", json.dumps(result, indent=1))
    write_plot(result, out_dir / "bench.png")
    docs.parent.mkdir(parents=True, exist_ok=True)
    runtime.write_text_atomic(docs, write_markdown(result, plot_path=out_dir / "bench.png", docs_path=docs))
    print(f"wrote {out_dir / 'bench.json'}, {out_dir / 'bench.png'}, {docs}", flush=True)
