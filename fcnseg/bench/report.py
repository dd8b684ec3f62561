"""Turn a bench.json result into the Markdown report and the plot; every verdict is computed."""
from __future__ import annotations

import os
from pathlib import Path

METHODS = [  # (key, label) in table order
    ("patch_nchw", "patch-by-patch, batched, NCHW"),
    ("patch_cl", "patch-by-patch, batched, channels_last"),
    ("shift_stitch", "shift-and-stitch"),
    ("hand", "hand conversion (NCHW)"),
    ("densify_plain", "fcnseg.densify(optimize=False)"),
    ("densify", "fcnseg.densify (default)"),
    ("densify_compiled", "densify(optimize=Optimizations(compile=True))"),
]
MIXED = [("densify_float16", "default, float16 autocast"), ("densify_bfloat16", "default, bfloat16 autocast")]
MEMBRANE = "membrane95"


def _fmt_time(t):
    if t is None:
        return "n/a"
    return f"{t * 1e3:.1f} ms" if t < 10 else f"{t:.1f} s"


def _x(v: float) -> str:
    return f"{v:,.0f}x" if v >= 10 else f"{v:.2f}x"


def matmul_rate(result) -> float:
    """The run's matmul ceiling: the faster of the 1024^2 and 2048^2 float32 products, averaged
    over the measurements at the start and the end of the run."""
    vals = [max(m.values()) for m in result["matmul_gflops"]]
    return sum(vals) / len(vals)


def net_matmul(net, result) -> float:
    """The matmul ceiling measured just before this network (the load changes during a run)."""
    return max(net["matmul_gflops"].values()) if net.get("matmul_gflops") else matmul_rate(result)


def run_matmul(net, run, result) -> float:
    """A run's (or profile's) own matmul ceiling where it was measured apart, else its network's."""
    return max(run["matmul_gflops"].values()) if run.get("matmul_gflops") else net_matmul(net, result)


def patch_time(fwd) -> tuple[float, str]:
    """The faster batched patch-by-patch layout (the baseline every speed-up is against)."""
    key = min((k for k in ("patch_nchw", "patch_cl") if k in fwd), key=lambda k: fwd[k]["time_s"])
    return fwd[key]["time_s"], key


def executed_share(fwd, matmul) -> float | None:
    d = fwd["densify"]
    return d["executed_flops"] / d["time_s"] / 1e9 / matmul if d.get("executed_flops") else None


def _net(result, name):
    return next((n for n in result["nets"] if n["name"] == name), None)


def _run(net, side):
    return next((r for r in net["runs"] if r["side"] == side), None) if net else None


def _verdict(ok):
    return "**met**" if ok else "**not met**"


def _share_verdict(shares, goal, loads=(), threads=1):
    """A share of matmul above 1 on a busy machine means the reference matmul ran at a busier
    moment than the pass: such a share says nothing, and neither do the others of that run. On a
    machine running nothing else (every load average below the benchmark's own threads + 1) it
    is real: oneDNN's convolution kernels can beat the float32 matmul used as the reference."""
    busy = not loads or any(v is None or v >= threads + 1 for v in loads)
    if busy and any(v is not None and v > 1.0 for v in shares):
        return "**not measurable in this run** (a share above 1: the load changed between the matmul and the pass)"
    return _verdict(all(v is not None and v >= goal for v in shares))


def _load(run):
    return run.get("load_average", [None])[0]


def target_lines(result) -> list[str]:
    matmul = matmul_rate(result)
    threads = result.get("machine", {}).get("torch_threads") or 1
    lines = []
    mem = _net(result, MEMBRANE)
    for side, goal in ((1024, 1500), (256, 1200)):
        run = _run(mem, side)
        if run:
            pt, key = patch_time(run["forward"])
            v = pt / run["forward"]["densify"]["time_s"]
            lines.append(f"- Membrane net forward at {side}x{side} >= {goal}x the faster batched patch-by-patch "
                         f"({dict(METHODS)[key]}): {_verdict(v >= goal)} ({v:,.0f}x; FLOP ratio "
                         f"{mem['flop_ratio']:.0f}x).")
            if v < goal:
                px = side * side
                patch_rate = mem["flops_patch"] * px / pt / 1e9
                dense_rate = mem["flops_dense_per_pixel"] * px / run["forward"]["densify"]["time_s"] / 1e9
                need = goal / mem["flop_ratio"] * patch_rate
                mm = run_matmul(mem, run, result)
                lines.append(f"  Why: speed-up = FLOP ratio x (dense model GFLOP/s / patch model GFLOP/s). The batched "
                             f"patch net ran at {patch_rate:.1f} GFLOP/s ({patch_rate / mm:.2f} of "
                             f"matmul), the dense pass at {dense_rate:.1f}; {goal}x needs {need:.1f} model GFLOP/s, "
                             f"{need / mm:.2f} of the matmul rate"
                             + (": more than the machine's matmul, so no dense pass can reach it against this "
                                "baseline." if need > mm else "."))
    mem_matmul = net_matmul(mem, result) if mem else matmul
    shares = [(side, executed_share(_run(mem, side)["forward"], run_matmul(mem, _run(mem, side), result)))
              for side in (512, 1024) if _run(mem, side)]
    if shares:
        lines.append(f"- Membrane dense pass >= 0.8 of the matmul rate measured just before it, executed "
                     f"FLOPs: {_share_verdict([s for _, s in shares], 0.8, [_load(_run(mem, side)) for side, _ in shares], threads)} "
                     f"({', '.join(f'{side}: {s:.2f}' for side, s in shares)}).")
        lines += [f"  {line}" for line in gap_lines(mem, mem_matmul)]
    run = _run(mem, 512)
    if run and run["train"]:
        row = next((r for r in run["train"] if r["k"] == 512 * 512), None)
        if row:
            v = row["patch"]["time_s"] / row["dense"]["time_s"]
            lines.append(f"- Forward+backward over all pixels at 512x512 >= the FLOP ratio "
                         f"({mem['flop_ratio']:.0f}x): {_verdict(v >= mem['flop_ratio'])} ({v:,.0f}x).")
    zoo = [(n, r) for n in result["nets"] if n["name"] != MEMBRANE and n["width"] == 1.0 for r in n["runs"]]
    if zoo:
        parts = [f"{n['name']} {r['side']}x{r['side']} stride {n['output_stride']}: "
                 f"{executed_share(r['forward'], net_matmul(n, result)):.2f}" for n, r in zoo]
        vgg = [executed_share(r["forward"], net_matmul(n, result)) for n, r in zoo if n["name"] == "vgg16"]
        vgg_loads = [_load(r) for n, r in zoo if n["name"] == "vgg16"]
        verdict = f"{_share_verdict(vgg, 0.6, vgg_loads, threads)} " if vgg else ""
        lines.append(f"- Zoo at width 1.0, executed share of matmul (>= 0.6 for vgg16): {verdict}"
                     f"({'; '.join(parts)}).")
    t = result.get("tiling")
    if t and "peak_mb" in t:
        per_px = t["time_s"] / t["side"] ** 2
        per_px_ref = t["reference_time_s"] / t["reference_side"] ** 2
        slower = per_px / per_px_ref - 1
        lines.append(f"- {t['side']}x{t['side']} through the default inference path ({t['net']}, tiles of at most "
                     f"{t['tile']} chosen from the default {t['memory_mb_budget']:.0f} MB budget): under 2 GB peak "
                     f"resident growth {_verdict(t['peak_mb'] < 2048)} ({t['peak_mb']:.0f} MB, including the "
                     f"{t['input_mb']:.0f} MB input); per-pixel time within 10% of untiled "
                     f"{t['reference_side']}x{t['reference_side']} {_verdict(slower <= 0.10)} "
                     f"({t['time_s']:.1f} s = {per_px * 1e6:.2f} us/pixel vs {per_px_ref * 1e6:.2f}: "
                     f"{100 * slower:+.0f}%). Tiled == untiled to {t['max_abs_diff_256']:.1e} on 256x256.")
    return lines


def gap_lines(net, matmul) -> list[str]:
    """From the profiles: how fast the convolutions alone ran, and where the rest of the time went."""
    out = []
    for prof in net.get("profiles", []):
        nodes = prof["nodes"]
        matmul = max(prof["matmul_gflops"].values()) if prof.get("matmul_gflops") else matmul
        total = sum(n["time_s"] for n in nodes)
        conv = [n for n in nodes if n["flops"]]
        conv_t, flops = sum(n["time_s"] for n in conv), sum(n["flops"] for n in conv)
        if not total or not conv_t:
            continue
        rest = sorted(((op, t) for op, (_, t, f) in _by_op(nodes) if not f and t > 0), key=lambda kv: -kv[1])
        parts = ", ".join(f"{op} {100 * t / total:.0f}%" for op, t in rest[:4])
        out.append(f"Profile at {prof['side']}x{prof['side']}: the convolutions alone ran at "
                   f"{flops / conv_t / 1e9:.0f} GFLOP/s ({flops / conv_t / 1e9 / matmul:.2f} of matmul) in "
                   f"{100 * conv_t / total:.0f}% of the time; operations without FLOPs took the rest ({parts}).")
    return out


def _forward_table(net, matmul) -> list[str]:
    rows = ["| side | method | time | vs patch | MP/s | model GFLOP/s | executed GFLOP/s (share of matmul) | "
            "peak MB | max abs diff | note |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    s = net["output_stride"]
    for run in net["runs"]:
        f, side = run["forward"], run["side"]
        matmul = max(run["matmul_gflops"].values()) if run.get("matmul_gflops") else matmul
        px = side * side
        out_px = (-(-side // s)) ** 2
        patch_t, _ = patch_time(f)
        for key, label in METHODS:
            r = f.get(key)
            if r is None:
                continue
            t = r.get("time_s")
            if t is None:
                rows.append(f"| {side} | {label} | n/a |  |  |  |  |  |  | {r.get('why', '')} |")
                continue
            flops = (net["flops_patch"] if key.startswith("patch") else net["flops_dense_per_pixel"]) * out_px
            executed = ""
            if r.get("executed_flops"):
                rate = r["executed_flops"] / t / 1e9
                executed = f"{rate:.0f} ({rate / matmul:.2f})"
            note = ""
            if key.startswith("patch"):
                note = (f"timed {r['sampled']} random output pixels (batch {r['batch_size']}), scaled "
                        f"x{out_px / r['sampled']:.0f}")
            elif key == "shift_stitch":
                note = (f"timed {r['sampled']} of {r['shifts']} shifts, scaled" if r["sampled"] < r["shifts"]
                        else f"all {r['shifts']} shifts")
            diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "(reference)"
            rows.append(f"| {side} | {label} | {_fmt_time(t)} | {_x(patch_t / t)} | {px / t / 1e6:.3g} | "
                        f"{flops / t / 1e9:.1f} | {executed} | {r['peak_mb']:.0f} | {diff} | {note} |")
    return rows


def _mixed_table(net) -> list[str]:
    rows = []
    for run in net["runs"]:
        f = run["forward"]
        for key, label in MIXED:
            if key in f:
                r = f[key]
                rows.append(f"| {run['side']} | {label} | {_fmt_time(r['time_s'])} | "
                            f"{f['densify']['time_s'] / r['time_s']:.2f}x | {r['max_abs_diff']:.1e} |")
    if not rows:
        return []
    return ["Mixed precision (CUDA autocast, float32 accumulation; not exact, so apart from the float32 table):",
            "", "| side | method | time | vs float32 default | max abs diff vs float32 |",
            "|---:|---|---:|---:|---:|", *rows, ""]


def _train_table(net) -> list[str]:
    rows = ["| side | k pixels | dense fwd+bwd (default densify) | patch-by-patch fwd+bwd | speed-up | dense peak MB | "
            "patch peak MB |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for run in net["runs"]:
        for row in run["train"]:
            d, p = row["dense"], row["patch"]
            scaled = "" if row["k"] == p["sampled"] else f" (timed {p['sampled']}, scaled)"
            rows.append(f"| {run['side']} | {row['k']:,} | {_fmt_time(d['time_s'])} | "
                        f"{_fmt_time(p['time_s'])}, {p['layout']}{scaled} | {_x(p['time_s'] / d['time_s'])} | "
                        f"{d['peak_mb']:.0f} | {p['peak_mb']:.0f} |")
    return rows


def _by_op(nodes):
    acc = {}
    for n in nodes:
        a = acc.setdefault(n["op"], [0, 0.0, 0])
        a[0] += 1
        a[1] += n["time_s"]
        a[2] += n["flops"]
    return sorted(acc.items(), key=lambda kv: -kv[1][1])


def _profile_tables(net, matmul, max_nodes=14) -> list[str]:
    out = []
    for prof in net.get("profiles", []):
        nodes = prof["nodes"]
        matmul = max(prof["matmul_gflops"].values()) if prof.get("matmul_gflops") else matmul
        total_t = sum(n["time_s"] for n in nodes)
        total_f = sum(n["flops"] for n in nodes) or 1
        side = prof["side"]
        out += [f"Profile at {side}x{side} (output stride {prof['output_stride']}): {total_t * 1e3:.0f} ms in all, "
                f"{total_f / total_t / 1e9:.0f} GFLOP/s executed overall = {total_f / total_t / 1e9 / matmul:.2f} "
                "of matmul.", "",
                "| operation | nodes | time | share of time | share of FLOPs | GFLOP/s (share of matmul) |",
                "|---|---:|---:|---:|---:|---:|"]
        for op, (count, t, f) in _by_op(nodes):
            rate = f"{f / t / 1e9:.0f} ({f / t / 1e9 / matmul:.2f})" if f and t > 0 else ""
            out.append(f"| {op} | {count} | {_fmt_time(t)} | {100 * t / total_t:.1f}% | {100 * f / total_f:.1f}% | "
                       f"{rate} |")
        top = sorted(nodes, key=lambda n: -n["time_s"])[:max_nodes]
        shown = "every node" if len(nodes) <= max_nodes else f"the {max_nodes} slowest of {len(nodes)} nodes"
        out += ["", f"Per node ({shown}, graph order):", "",
                "| node | operation | shapes | time | share of time | share of FLOPs | GFLOP/s (share of matmul) |",
                "|---|---|---|---:|---:|---:|---:|"]
        for n in (n for n in nodes if n in top):
            rate = f"{n['flops'] / n['time_s'] / 1e9:.0f} ({n['flops'] / n['time_s'] / 1e9 / matmul:.2f})" \
                if n["flops"] and n["time_s"] > 0 else ""
            out.append(f"| {n['name']} | {n['op']} | {n['detail']} | {_fmt_time(n['time_s'])} | "
                       f"{100 * n['time_s'] / total_t:.1f}% | {100 * n['flops'] / total_f:.1f}% | {rate} |")
        out.append("")
    return out


NOTES = """## What the default path does, and what the profile decided

`fcnseg.densify(model)` returns the optimised dense network (`fcnseg/convert/optimize.py`; why each
rewrite is exact: docs/algorithm.md, "The optimising rewrite"). Besides channels_last end to end,
folded batch norm and dropped identity windows, four levers were added from the per-node profile
and the training rows below; each is exact up to float rounding (tests/test_optimize.py compares
with `fcnseg.patchwise` in float64, forward and gradients):

- **Freed memory reused across repeated work** (`fcnseg.runtime.reuse_freed_memory`, CPU with
  glibc). The profile's slow zero-FLOP rows (a 2x2 max pool slower than the 48-channel
  convolution before it) were page faults: glibc maps every block above 32 MB afresh and the
  kernel faults in and zeroes each page on first touch, about 1 s per GB on this machine. A
  forward pass now takes its large blocks from the malloc heap, and a training run, an inference
  run (images and tiles) and `fcnseg.patchwise` (its batches) keep that heap for their whole
  length, so a pass reuses the pages of the pass before. Idle machine, 2 threads, the settings
  alternated in one process: membrane net at 256x256 0.38-0.46 s per pass -> 0.28-0.32 s; its
  fwd+bwd over every pixel of 256x256 2.73 s -> 1.65 s; the demo's training step 0.48-0.63 s ->
  0.39-0.41 s. The batched patch-by-patch baseline gains as much (2.1 instead of 4.3 ms a patch),
  which is why every method below is timed in that steady state (see the list above).
- **Weight gradients in bands of output rows** (training on CPU). oneDNN's weight gradient
  unfolds the whole input and, past 1 GiB, falls back to its scalar reference kernel: a
  512x512 membrane-net step spent 305 s in one 5x5 layer and 140 s in the next (this is what
  stalled the 512x512 training rows before). Summed over bands whose unfolded input stays under
  64 MB, those layers take 1.8 s, and smaller layers gain too (the 48->200 3x3 layer at 512x512:
  1.73 s -> 0.98 s; the whole 256x256 step 1.65 s -> 1.33 s).
- **No layout copy after the first convolution of a gray image.** A `(C, 1, kh, kw)` kernel is
  passed as an NHWC-strided view, so the convolution writes NHWC itself: at 256x256 the first
  convolution plus its copy went from 34 + 42 ms to 24 ms.
- **Wide FC-derived convolutions as matrix products over gathered windows** (reduction
  `C*kh*kw >= 4096`, CPU inference). VGG-16's fc6 (512 -> 4096, 7x7, dilation 4) ran at 0.01 of
  the matmul rate on a 16x16 output (oneDNN reorders the 411 MB kernel on every call); gathered:
  2.2x faster there, as fast on 32x32. The membrane net's fc1 (reduction 432) was 2x slower
  gathered and stays on oneDNN.

Decided against, from the same profiles:
- oneDNN fused convolution + ReLU/PReLU/add: the zoo's ReLUs are in place and took 0.3-2% of the
  membrane pass; a fused post-op can save at most that. ResNet's residual additions are the
  exception (see its profile), but a fused add needs the inference-only
  `mkldnn._convolution_pointwise` ops and a second code path for training.
- The padding copy: the `pad` row is under 0.5% of every pass.
- Pooling: already the channels_last kernel (vectorised across channels, any dilation). Max
  pooling as the maximum of shifted views was as fast forward, 10x slower backward, and splits
  gradients at ties; separable pools were slower.
- Threads: the run uses PyTorch's default (one thread per core); on the idle machine one thread
  gave 0.76 s and two 0.39 s for the 256x256 pass, and the patch baseline scaled alike
  (428 s vs 240 s), so the ratios do not depend on it.
- torch.compile (inductor): exact and 10-15% faster on the membrane net, but it compiles for
  over a minute per input shape on 2 cores; `--compile` times it, it is not the default.

Why the membrane net's forward stays near its FLOP ratio: the speed-up is the FLOP ratio times
the dense pass's rate over the patch pass's, in model FLOPs. The dense pass also computes the
border of its padded input (executed FLOPs 1.5x the model's at 256x256, 1.2x at 1024x1024), and
in steady state the batched patch baseline runs its 95x95 patches at close to the matmul rate,
so no exact dense pass on this CPU reaches 1200-1500x against it: the needed rate is printed
with each target above.

The batched patch-by-patch baselines run `fcnseg.patchwise` on the classifier in NCHW and on a
channels_last copy, batches of up to 256 patches, under `torch.inference_mode()`; patch training
accumulates gradients batch by batch. Shift-and-stitch runs the strided FCN with the same default
optimisations, so the comparison is of methods, not layouts.
"""


def write_markdown(result, plot_path: Path, docs_path: Path, notes: str = NOTES) -> str:
    m = result["machine"]
    matmul = matmul_rate(result)
    gpu = m.get("gpu")
    rel_plot = os.path.relpath(plot_path, docs_path.parent)
    mm = "; ".join(", ".join(f"{n}^2: {v:.0f}" for n, v in r.items()) for r in result["matmul_gflops"])
    run_loads = [f"{n['name']} {r['side']}: {r['load_average'][0]:.1f}" for n in result["nets"] for r in n["runs"]
                 if r.get("load_average")]
    lines = [
        "# Benchmarks: exact dense inference and training against every other method",
        "",
        f"Generated by `python tools/bench.py{' --quick' if result['mode'] == 'quick' else ''}` "
        f"({result['mode']} run, {result['wall_s'] / 60:.1f} minutes"
        + ("; partial: written after the last network that finished" if result.get("partial") else "") + ").",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"Python {m['python']}; device **{m['device']}**" + (f" ({gpu}, cuDNN {m['cudnn']})" if gpu else "")
        + ". " + ("These are GPU numbers (CUDA events, cudnn.benchmark on)." if gpu else
                  "These are CPU numbers; no GPU was used (`python tools/bench.py --device cuda` writes the "
                  "same tables for a GPU, with float16/bfloat16 autocast timed apart, into results/cuda/)."),
        f"- Float32 matmul in this run (GFLOP/s, start; end): {mm}. *Share of matmul* below is against the "
        "faster of the two sizes measured just before each network (given with it), as the load changes.",
        f"- Load average (1 min) at start / end: {result['load_average_start'][0]:.2f} / "
        f"{result['load_average_end'][0]:.2f}; at each run: {', '.join(run_loads)}. The machine may be shared: "
        "absolute times are noisy, **ratios are measured within one run**.",
        "- Times are medians of repeats after one warm-up call (the warm-up also measures peak memory: "
        "resident-set growth on CPU, `torch.cuda.max_memory_allocated` on GPU). Every method, baselines "
        "included, is timed in its steady state: its timed calls reuse the memory pages its warm-up filled "
        "(`fcnseg.runtime.reuse_freed_memory`, as training and inference runs do). Forward passes run under "
        "`torch.inference_mode()`, one image `(1, C, side, side)`. The exact dense methods are timed "
        "round-robin, in a rotating order, so a load spike hits them alike.",
        "- Patch-by-patch and shift-and-stitch cost exactly linearly in the number of patches / shifts: they "
        "are timed on a random sample and scaled (marked in the notes column). The speed-ups are against the "
        "faster of the NCHW and channels_last patch-by-patch runs.",
        "- *model GFLOP/s*: the cost model of docs/algorithm.md (`geometry`: FLOPs of one patch per output "
        "pixel for patch-by-patch, dense FLOPs per output pixel otherwise) divided by the time. *executed "
        "GFLOP/s*: the FLOPs the default dense network actually runs (convolutions and matrix products, "
        "counted by `torch.utils.flop_counter`, including the padded border) against the matmul rate.",
        "- *max abs diff*: against `fcnseg.densify` (default) on the same input (patch-by-patch at the "
        "sampled pixels, shift-and-stitch on the last timed shift).",
        "",
        "## Targets",
        "",
        *target_lines(result),
        "",
        f"![time and speed-up against image size]({rel_plot})",
        "",
    ]
    if notes:
        lines += [notes.strip(), ""]
    for net in result["nets"]:
        p = net["patch_size"]
        matmul = net_matmul(net, result)
        lines += [f"## {net['name']} (width {net['width']}, {net['source']}, output stride {net['output_stride']})", "",
                  f"Patch {p[0]}x{p[1]}, {net['in_channels']} input channel(s), total stride "
                  f"{net['total_stride'][0]}; {net['flops_patch'] / 1e6:.1f} MFLOP per patch, "
                  f"{net['flops_dense_per_pixel'] / 1e3:.1f} kFLOP per output pixel dense: FLOP ratio "
                  f"**{net['flop_ratio']:.0f}x**. Matmul just before it: "
                  + ", ".join(f"{n}^2 {v:.0f} GFLOP/s" for n, v in net.get("matmul_gflops", {}).items())
                  + f"; load average {net['runs'][0].get('load_average', ['?'])[0]}.", "", "Forward:", "", *_forward_table(net, matmul), "",
                  *_mixed_table(net)]
        if any(r["train"] for r in net["runs"]):
            lines += ["Training step (masked per-pixel cross-entropy on k random pixels, forward + backward):", "",
                      *_train_table(net), ""]
        if net.get("profiles"):
            lines += ["### Where the time goes (default dense graph, one node at a time)", "",
                      *_profile_tables(net, matmul)]
    return "\n".join(lines) + "\n"


def write_plot(result, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if not result["nets"]:
        return
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 4.8))
    focus = _net(result, MEMBRANE) or result["nets"][0]
    sides = [r["side"] for r in focus["runs"]]
    for key, label in METHODS:
        ts = [r["forward"].get(key, {}).get("time_s") for r in focus["runs"]]
        pts = [(s, t) for s, t in zip(sides, ts) if t]
        if pts:
            ax_t.plot(*zip(*pts), marker="o", label=label)
    train = [(r["side"], row["dense"]["time_s"]) for r in focus["runs"] for row in r["train"]
             if row["k"] == r["side"] ** 2]
    if train:
        ax_t.plot(*zip(*train), marker="s", linestyle="--", label="densify fwd+bwd (all pixels)")
    ax_t.set(xscale="log", yscale="log", xlabel="image side (pixels)", ylabel="time (s)",
             title=f"{focus['name']}: forward time")
    ax_t.set_xticks(sides, [str(s) for s in sides])
    ax_t.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_t.legend(fontsize=7)
    for net in result["nets"]:
        s = [r["side"] for r in net["runs"]]
        fwd = [patch_time(r["forward"])[0] / r["forward"]["densify"]["time_s"] for r in net["runs"]]
        line, = ax_s.plot(s, fwd, marker="o", label=f"{net['name']} forward (FLOP ratio {net['flop_ratio']:.0f}x)")
        tr = [(r["side"], row["patch"]["time_s"] / row["dense"]["time_s"]) for r in net["runs"]
              for row in r["train"] if row["k"] == r["side"] ** 2]
        if tr:
            ax_s.plot(*zip(*tr), marker="s", linestyle="--", color=line.get_color(), label=f"{net['name']} fwd+bwd")
    ax_s.axhline(1500, color="gray", linewidth=0.8, linestyle=":")
    ax_s.set(xscale="log", yscale="log", xlabel="image side (pixels)", ylabel="speed-up over patch-by-patch",
             title="fcnseg.densify vs the faster batched patch-by-patch")
    all_sides = sorted({r["side"] for n in result["nets"] for r in n["runs"]})
    ax_s.set_xticks(all_sides, [str(v) for v in all_sides])
    ax_s.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_s.legend(fontsize=7)
    fig.suptitle(f"{result['machine']['cpu']} ({result['machine']['device']}), torch {result['machine']['torch']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def speed_table(result) -> list[str]:
    """The README's speed table (membrane net, forward) from a results file."""
    mem = _net(result, MEMBRANE)
    matmul = net_matmul(mem, result) if mem else matmul_rate(result)
    rows = ["| image | batched patch-by-patch (faster layout) | shift-and-stitch | hand conversion (NCHW) | "
            "densify(optimize=False) | fcnseg.densify | speed-up vs patch | share of matmul |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in mem["runs"] if mem else []:
        f = run["forward"]
        pt, _ = patch_time(f)
        d = f["densify"]["time_s"]
        matmul = run_matmul(mem, run, result)
        rows.append(f"| {run['side']}x{run['side']} | {_fmt_time(pt)} | {_fmt_time(f.get('shift_stitch', {}).get('time_s'))} "
                    f"| {_fmt_time(f.get('hand', {}).get('time_s'))} | {_fmt_time(f.get('densify_plain', {}).get('time_s'))} "
                    f"| {_fmt_time(d)} | {_x(pt / d)} | {executed_share(f, matmul):.2f} |")
    return rows
