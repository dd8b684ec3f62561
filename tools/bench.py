"""Benchmark: fcnseg's dense engine against every other way of computing the same per-pixel output.

    python tools/bench.py            # full run (about 10 minutes on 2 CPU cores)
    python tools/bench.py --quick    # 1-2 minute smoke run into results/quick/

For each network and image size, in one run: batched patch-by-patch, the hand conversion,
shift-and-stitch, fcnseg.densify and fcnseg.engine.fast (forward), and forward+backward of a
masked per-pixel loss on k sampled pixels against patch-by-patch training on the same pixels.
Writes <out-dir>/bench.json, <out-dir>/bench.png and a Markdown report (docs/benchmarks.md).
Costs that are linear in the number of patches or shifts are timed on a random sample and
scaled; the report marks them.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

import fcnseg
from fcnseg.engine import fast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_measure import Timer, load_average, machine, matmul_gflops, release_freed_memory  # noqa: E402
from bench_methods import (HandConversionError, HandDense, ShiftAndStitch, build_network,  # noqa: E402
                           dense_train_step, hand_convert, patch_batch_size, patch_train_step,
                           sample_pixels)
from bench_report import write_markdown, write_plot  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# (network, width multiplier, forward sides, training sides). Widths and sizes keep the whole
# run near 10 minutes on 2 shared CPU cores; the zoo nets' patches (355-427 px) make even a
# 128x128 image a 480-560 px dense pass.
FULL = {
    "nets": [("membrane95", 1.0, [128, 256, 512, 1024], [256, 512]),
             ("lenet5", 1.0, [128, 256, 512, 1024], [256]),
             ("cnn_f", 0.125, [128], [128]), ("vgg16", 0.0625, [128], [128]), ("resnet50", 0.0625, [128], [128])],
    "ks": [64, 4096, "all"],
    "repeats": 3, "budget_s": 4.0, "patch_seconds": 1.0, "tiling": ("lenet5", 4096, 512),
}
QUICK = {
    "nets": [("membrane95", 1.0, [64, 128], [64]), ("lenet5", 1.0, [64], [64])],
    "ks": [64, "all"],
    "repeats": 2, "budget_s": 1.0, "patch_seconds": 0.2, "tiling": ("lenet5", 384, 128),
}
MAX_SAMPLE = 2048         # patches per sample: enough for a stable per-patch time on small nets


def record(timing, scale=1.0, **extra) -> dict:
    return {"time_s": timing.median * scale, "times_s": [t * scale for t in timing.times],
            "peak_mb": timing.peak_bytes / 2 ** 20, **extra}


def max_diff(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def channels_last_copy(model):
    """The patch classifier with NHWC weights: the fastest way to run it patch by patch on CPU."""
    fast_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    fast_model.patch_size = model.patch_size
    return fast_model


def sample_size(run, side, batch, seconds, device) -> int:
    """Patches to time so that the sample takes about `seconds`: one batch calibrates the rate."""
    probe = sample_pixels(side, side, batch, seed=9).to(device)
    run(probe)                                                    # first call: allocations, kernels
    t = time.perf_counter()
    run(probe)
    per_patch = (time.perf_counter() - t) / len(probe)
    n = int(seconds / max(per_patch, 1e-9)) // batch * batch
    return max(min(batch, side * side), min(side * side, MAX_SAMPLE, n))


def bench_forward(model, c, side, cfg, timer, device, compile_body):
    """All forward methods on one (1, c, side, side) image; returns {method: record}."""
    torch.manual_seed(0)
    x = torch.randn(1, c, side, side, device=device)
    dense = fcnseg.densify(model)
    engine = fast(dense)
    geo = dense.geometry
    pixels_total = side * side
    out = {}
    with torch.inference_mode():
        ref = engine(x)
        nchw = fast(dense, channels_last=False)             # the graph rewrites without the layout
        methods = {"engine_fast": engine, "engine_default": dense, "engine_fast_nchw": nchw}
        if compile_body:
            methods["engine_compiled"] = fast(dense, compile=True)
            methods["engine_compiled"](x)                    # compile outside the timing
        try:
            methods["hand"] = HandDense(hand_convert(model, model.patch_size, c), model.patch_size).to(device)
        except HandConversionError as exc:
            out["hand"] = {"time_s": None, "why": str(exc)}
        # the exact dense methods are timed round-robin, so their ratios share the machine's load
        timings = timer.compare({k: (lambda net=net: net(x)) for k, net in methods.items()},
                                count_flops={"engine_fast"})
        out["engine_fast"] = record(timings["engine_fast"], executed_flops=timings["engine_fast"].flops)
        for key, net in methods.items():
            if key != "engine_fast":
                out[key] = record(timings[key], max_abs_diff=max_diff(net(x), ref))
        # shift-and-stitch: every shift costs the same; time a spread-out sample of them
        ss = ShiftAndStitch(model)
        all_shifts = ss.shifts
        n = max(1, min(len(all_shifts), round(cfg["patch_seconds"] / max(1e-3, out["engine_fast"]["time_s"]))))
        shifts = all_shifts[:: max(1, len(all_shifts) // n)][:n]
        t = timer(lambda: ss.run_shifts(x, shifts))
        part = ss.run_shifts(x, shifts)
        a, b = shifts[-1]
        diff = max_diff(part[..., a :: ss.s[0], b :: ss.s[1]], ref[..., a :: ss.s[0], b :: ss.s[1]])
        out["shift_stitch"] = record(t, len(all_shifts) / len(shifts), shifts=len(all_shifts),
                                     sampled=len(shifts), max_abs_diff=diff)
        # patch-by-patch, batched; linear in the number of pixels: time a sample, scale
        bs = patch_batch_size(model.patch_size, c)
        nhwc = channels_last_copy(model)
        n_pix = sample_size(lambda p: fcnseg.patchwise(nhwc, x, pixels=p, batch_size=bs), side, bs,
                            cfg["patch_seconds"], device)
        pix = sample_pixels(side, side, n_pix).to(device)
        t = timer(lambda: fcnseg.patchwise(nhwc, x, pixels=pix, batch_size=bs))
        pw = fcnseg.patchwise(nhwc, x, pixels=pix, batch_size=bs)[..., pix[:, 0], pix[:, 1]]
        out["patch"] = record(t, pixels_total / n_pix, sampled=n_pix, batch_size=bs,
                              max_abs_diff=max_diff(pw, ref[..., pix[:, 0], pix[:, 1]]))
    return out, geo


def bench_train(model, c, side, cfg, timer, device):
    """Forward+backward of a masked loss on k pixels: dense (fast engine) vs patch training."""
    torch.manual_seed(1)
    x = torch.randn(1, c, side, side, device=device)
    engine = fast(fcnseg.densify(model))
    geo = engine.geometry
    bs = patch_batch_size(model.patch_size, c)
    nhwc = channels_last_copy(model)
    # patch training costs k times one patch's forward+backward: time a sample, scale to each k
    n_pix = sample_size(lambda p: patch_train_step(nhwc, x, p, torch.zeros(len(p), dtype=torch.long,
                                                                           device=device), bs),
                        side, bs, cfg["patch_seconds"], device)
    pix = sample_pixels(side, side, n_pix, seed=2).to(device)
    tgt = torch.randint(0, geo.num_classes, (n_pix,), device=device)
    t_patch = timer(lambda: patch_train_step(nhwc, x, pix, tgt, bs))
    rows = []
    for k in cfg["ks"]:
        k = side * side if k == "all" else k
        if k > side * side:
            continue
        pk = sample_pixels(side, side, k, seed=3).to(device)
        tk = torch.randint(0, geo.num_classes, (k,), device=device)
        t_dense = timer(lambda: dense_train_step(engine, model, x, pk, tk))
        rows.append({"k": k, "dense": record(t_dense),
                     "patch": record(t_patch, k / n_pix, sampled=n_pix, batch_size=bs)})
    return rows


def bench_tiling(name, side, tile, device, timer):
    """Peak memory and time of exact tiled inference of a side x side image (fcnseg.infer.tiling)."""
    try:
        from fcnseg.infer.tiling import predict_tiled
    except ImportError as exc:
        return {"skipped": f"fcnseg.infer.tiling not importable: {exc}"}
    model, c, _ = build_network(name, 1.0)
    engine = fast(fcnseg.densify(model.to(device)))
    # same output as untiled: check on an image small enough to run untiled
    small = torch.randn(c, 256, 256, device=device)
    with torch.inference_mode():
        untiled = engine(small[None])[0]
    tiled = predict_tiled(engine, small, 64).scores
    diff = max_diff(tiled.to(untiled.device), untiled)
    image = torch.randn(c, side, side)
    t = timer(lambda: predict_tiled(engine, image, tile, return_scores=False), warmup=False)
    return {"net": name, "side": side, "tile": tile, "time_s": t.median, "peak_mb": t.peak_bytes / 2 ** 20,
            "input_mb": image.numel() * 4 / 2 ** 20, "max_abs_diff_256": diff}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small smoke run (1-2 minutes) into results/quick")
    ap.add_argument("--out-dir", type=Path, help="where bench.json and bench.png go (default results/ "
                    "or results/quick/)")
    ap.add_argument("--docs", type=Path, help="Markdown report (default docs/benchmarks.md; quick: "
                    "<out-dir>/benchmarks.md)")
    ap.add_argument("--nets", nargs="+", help="only these networks (names from the config)")
    ap.add_argument("--sizes", nargs="+", type=int, help="override the image sides")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, help="torch.set_num_threads for the whole run")
    ap.add_argument("--compile", action="store_true", help="also time fast(compile=True) (slow to compile)")
    ap.add_argument("--no-tiling", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report and plot from an "
                    "existing <out-dir>/bench.json without measuring anything")
    args = ap.parse_args(argv)

    cfg = QUICK if args.quick else FULL
    out_dir = args.out_dir or (ROOT / "results" / "quick" if args.quick else ROOT / "results")
    docs = args.docs or (out_dir / "benchmarks.md" if args.quick else ROOT / "docs" / "benchmarks.md")
    if args.report_only:
        result = json.loads((out_dir / "bench.json").read_text())
        write_plot(result, out_dir / "bench.png")
        docs.write_text(write_markdown(result, plot_path=out_dir / "bench.png", docs_path=docs))
        print(f"wrote {out_dir / 'bench.png'} and {docs} from {out_dir / 'bench.json'}")
        return result
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True          # never cudnn.deterministic: dilated convs crawl
    if args.threads:
        torch.set_num_threads(args.threads)
    release_freed_memory()
    timer = Timer(device, cfg["repeats"], cfg["budget_s"])
    started = time.time()
    result = {"machine": machine(device), "mode": "quick" if args.quick else "full",
              "load_average_start": load_average(), "matmul_gflops": [matmul_gflops(device)], "nets": []}
    print(f"matmul 2048^2: {result['matmul_gflops'][0]:.0f} GFLOP/s", flush=True)
    for name, width, sizes, train_sizes in cfg["nets"]:
        if args.nets and name not in args.nets:
            continue
        model, c, source = build_network(name, width)
        model.to(device)
        entry = {"name": name, "width": width, "source": source, "in_channels": c,
                 "patch_size": list(model.patch_size), "runs": []}
        for side in args.sizes or sizes:
            t0 = time.time()
            fwd, geo = bench_forward(model, c, side, cfg, timer, device, args.compile)
            train = bench_train(model, c, side, cfg, timer, device) if side in train_sizes or args.sizes else []
            entry.update(total_stride=list(geo.total_stride), flops_patch=geo.flops_patch,
                         flops_dense_per_pixel=geo.flops_dense_per_pixel, flop_ratio=geo.flop_ratio)
            entry["runs"].append({"side": side, "forward": fwd, "train": train})
            best = fwd["engine_fast"]["time_s"]
            print(f"{name:10} {side:5}: fast {best * 1e3:8.1f} ms, default "
                  f"{fwd['engine_default']['time_s'] * 1e3:8.1f} ms, hand "
                  f"{(fwd['hand']['time_s'] or float('nan')) * 1e3:8.1f} ms, patch "
                  f"{fwd['patch']['time_s']:8.1f} s ({fwd['patch']['time_s'] / best:6.0f}x) "
                  f"[{time.time() - t0:.0f} s]", flush=True)
        result["nets"].append(entry)
    if not args.no_tiling and not args.nets:
        name, side, tile = cfg["tiling"]
        result["tiling"] = bench_tiling(name, side, tile, device, Timer(device, 1, 0.0))
        print(f"tiling: {result['tiling']}", flush=True)
    result["matmul_gflops"].append(matmul_gflops(device))
    result["load_average_end"] = load_average()
    result["wall_s"] = time.time() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=1))
    write_plot(result, out_dir / "bench.png")
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(write_markdown(result, plot_path=out_dir / "bench.png", docs_path=docs))
    print(f"wrote {out_dir / 'bench.json'}, {out_dir / 'bench.png'}, {docs} in {result['wall_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
