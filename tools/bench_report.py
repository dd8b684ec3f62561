"""Turn a bench.json result into the Markdown report and the plot."""
from __future__ import annotations

import os
from pathlib import Path

METHODS = [  # (key, label) in table order
    ("patch", "patch-by-patch (batched)"),
    ("shift_stitch", "shift-and-stitch"),
    ("hand", "hand conversion (NCHW)"),
    ("engine_default", "fcnseg.densify"),
    ("engine_fast_nchw", "fast(channels_last=False)"),
    ("engine_fast", "fcnseg.engine.fast"),
    ("engine_compiled", "fast(compile=True)"),
]
EXACT_DENSE = ("shift_stitch", "hand", "engine_default", "engine_fast")
CONV_HEAVY = ("vgg16", "resnet50", "cnn_f")


def _fmt_time(t):
    if t is None:
        return "n/a"
    return f"{t * 1e3:.1f} ms" if t < 10 else f"{t:.1f} s"


def _x(v: float) -> str:
    return f"{v:,.0f}x" if v >= 10 else f"{v:.2f}x"


def _matmul(result):
    vals = sorted(result["matmul_gflops"])
    return vals[len(vals) // 2] if len(vals) % 2 else sum(vals) / len(vals)


def summarise(result) -> dict:
    """Every target of the benchmark, computed from the numbers (nothing typed in)."""
    matmul = _matmul(result)
    out = {"membrane_fwd": [], "membrane_train": [], "fastest": [], "vs_hand": [], "gflops": []}
    for net in result["nets"]:
        for run in net["runs"]:
            f = run["forward"]
            fast_t = f["engine_fast"]["time_s"]
            if net["name"] == "membrane95" and run["side"] >= 256:
                out["membrane_fwd"].append((run["side"], f["patch"]["time_s"] / fast_t))
                for row in run["train"]:
                    if row["k"] == run["side"] ** 2:
                        out["membrane_train"].append((run["side"], row["patch"]["time_s"] / row["dense"]["time_s"]))
            others = {k: f[k]["time_s"] for k in EXACT_DENSE if k != "engine_fast" and f.get(k, {}).get("time_s")}
            best_other = min(others, key=others.get)
            out["fastest"].append((net["name"], run["side"], others[best_other] / fast_t, best_other))
            if f["hand"]["time_s"]:
                out["vs_hand"].append((net["name"], run["side"], f["hand"]["time_s"] / fast_t))
            if net["name"] in CONV_HEAVY and f["engine_fast"].get("executed_flops"):
                rate = f["engine_fast"]["executed_flops"] / fast_t / 1e9
                out["gflops"].append((net["name"], run["side"], rate, rate / matmul))
    return out


def _target_lines(result) -> list[str]:
    s = summarise(result)
    matmul_rate = _matmul(result)
    lines = []

    def verdict(ok):
        return "**met**" if ok else "**not met**"

    if s["membrane_fwd"]:
        ok = all(v >= 1500 for _, v in s["membrane_fwd"])
        lines.append(f"- Dense forward >= 1500x batched patch-by-patch, membrane net, sides >= 256: {verdict(ok)} "
                     f"({', '.join(f'{side}: {v:.0f}x' for side, v in s['membrane_fwd'])}).")
        if not ok:
            net = next(n for n in result["nets"] if n["name"] == "membrane95")
            run = max(net["runs"], key=lambda r: r["side"])
            px = run["side"] ** 2
            patch_rate = net["flops_patch"] * px / run["forward"]["patch"]["time_s"] / 1e9
            dense_rate = net["flops_dense_per_pixel"] * px / run["forward"]["engine_fast"]["time_s"] / 1e9
            lines.append(f"  Why: the speed-up is the FLOP ratio ({net['flop_ratio']:.0f}x, section 6) times "
                         f"the dense pass's efficiency over patch-by-patch's. At {run['side']}x{run['side']} the "
                         f"batched channels_last patch net ran at {patch_rate:.0f} model GFLOP/s and the dense "
                         f"pass at {dense_rate:.0f}: {net['flop_ratio'] * dense_rate / patch_rate:.0f}x. 1500x "
                         f"would need the dense pass to run {1500 / net['flop_ratio']:.1f}x more efficiently "
                         "than a well-batched patch network; both are the same oneDNN convolutions over 48 "
                         "channels, so that margin only appears against a weak baseline (unbatched, NCHW).")
    if s["membrane_train"]:
        ok = all(v >= 1500 for _, v in s["membrane_train"])
        lines.append(f"- Forward+backward, all pixels, same comparison: {verdict(ok)} "
                     f"({', '.join(f'{side}: {v:.0f}x' for side, v in s['membrane_train'])}).")
    if s["fastest"]:
        ok = all(v >= 1.0 for *_, v, _ in s["fastest"])
        worst = min(s["fastest"], key=lambda r: r[2])
        lines.append(f"- fcnseg.engine.fast the fastest exact dense method on every network and size: {verdict(ok)} "
                     f"(smallest margin {worst[2]:.2f}x over {worst[3]} on {worst[0]} at {worst[1]}).")
    if s["vs_hand"]:
        ok = all(v >= 1.2 for *_, v in s["vs_hand"])
        lines.append(f"- >= 1.2x faster than the hand conversion on nets with pooling: {verdict(ok)} "
                     f"({', '.join(f'{n} {side}: {v:.2f}x' for n, side, v in s['vs_hand'])}).")
    if s["gflops"]:
        ok = all(frac >= 0.6 for *_, frac in s["gflops"])
        lines.append(f"- Executed GFLOP/s >= 60% of the run's matmul on conv-heavy nets: {verdict(ok)} "
                     f"({', '.join(f'{n} {side}: {100 * f:.0f}%' for n, side, _, f in s['gflops'])}).")
        best = [(n["name"], r["side"], r["forward"]["engine_fast"]["executed_flops"] / r["forward"]["engine_fast"]
                 ["time_s"] / 1e9 / matmul_rate) for n in result["nets"] for r in n["runs"]
                if r["forward"]["engine_fast"].get("executed_flops")]
        if not ok and best:
            name, side, frac = max(best, key=lambda b: b[2])
            lines.append(f"  Why: to fit the run in minutes on 2 cores the zoo nets run at width 0.0625-0.125, "
                         "i.e. 4-128 channels per layer, where a convolution is bound by memory traffic, not "
                         "arithmetic; ResNet also spends its time in residual additions, ReLUs and its "
                         f"per-patch tail. The same engine reached {100 * frac:.0f}% on {name} at {side}x{side}: "
                         "the rate grows with channels and image size.")
    t = result.get("tiling")
    if t and "peak_mb" in t:
        ok = t["peak_mb"] < 2048
        lines.append(f"- Tiled inference of {t['side']}x{t['side']} ({t['net']}, tiles of {t['tile']}) under 2 GB: "
                     f"{verdict(ok)} (peak RSS growth {t['peak_mb']:.0f} MB including the {t['input_mb']:.0f} MB "
                     f"input, {t['time_s']:.1f} s; tiled == untiled to {t['max_abs_diff_256']:.1e} on 256x256).")
    return lines


def _forward_table(net, matmul) -> list[str]:
    rows = ["| side | method | time | vs patch | vs hand | MP/s | model GFLOP/s | executed GFLOP/s (% matmul) | "
            "peak MB | max abs diff | note |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for run in net["runs"]:
        f, side = run["forward"], run["side"]
        px = side * side
        patch_t, hand_t = f["patch"]["time_s"], f["hand"].get("time_s")
        for key, label in METHODS:
            r = f.get(key)
            if r is None:
                continue
            t = r.get("time_s")
            if t is None:
                rows.append(f"| {side} | {label} | n/a |  |  |  |  |  |  |  | {r.get('why', '')} |")
                continue
            flops = net["flops_patch"] * px if key == "patch" else net["flops_dense_per_pixel"] * px
            executed = ""
            if r.get("executed_flops"):
                rate = r["executed_flops"] / t / 1e9
                executed = f"{rate:.0f} ({100 * rate / matmul:.0f}%)"
            note = ""
            if key == "patch":
                note = f"timed {r['sampled']} random pixels (batch {r['batch_size']}), scaled x{px / r['sampled']:.0f}"
            elif key == "shift_stitch" and r["sampled"] < r["shifts"]:
                note = f"timed {r['sampled']} of {r['shifts']} shifts, scaled"
            elif key == "shift_stitch":
                note = f"all {r['shifts']} shifts"
            diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "(reference)"
            rows.append(f"| {side} | {label} | {_fmt_time(t)} | {_x(patch_t / t)} | "
                        f"{(f'{hand_t / t:.2f}x' if hand_t else '')} | {px / t / 1e6:.3g} | {flops / t / 1e9:.1f} | "
                        f"{executed} | {r['peak_mb']:.0f} | {diff} | {note} |")
    return rows


def _train_table(net) -> list[str]:
    rows = ["| side | k pixels | dense fwd+bwd (fast engine) | patch-by-patch fwd+bwd | speed-up | dense peak MB | "
            "patch peak MB |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for run in net["runs"]:
        for row in run["train"]:
            d, p = row["dense"], row["patch"]
            scaled = "" if row["k"] == p["sampled"] else f" (timed {p['sampled']}, scaled)"
            rows.append(f"| {run['side']} | {row['k']:,} | {_fmt_time(d['time_s'])} | {_fmt_time(p['time_s'])}{scaled} | "
                        f"{_x(p['time_s'] / d['time_s'])} | {d['peak_mb']:.0f} | {p['peak_mb']:.0f} |")
    return rows


NOTES = """## What the engine does, and what was tried

```python
from fcnseg.engine import fast
net = fast(fcnseg.densify(model))        # options: channels_last, fold_bn, compile, threads
scores = net(images)                     # same values as fcnseg.densify(model)(images)
```

`fcnseg.engine.fast(dense)` rewrites the dense network's fx graph without changing what it
computes (`tests/test_engine.py` compares it with `fcnseg.patchwise` in float64 and float32,
forward and backward):

1. **channels_last end to end.** The input, and the output of a convolution on a 1-channel map
   (a `(N, 1, H, W)` tensor is NCHW- and NHWC-contiguous at once, and PyTorch then keeps the
   whole network in NCHW), are converted to channels_last. Stride-1 dilated max pooling and
   the depthwise convolution of dilated average pooling gain most (their NCHW CPU kernels do
   not vectorise over channels). Gain: the `fast(channels_last=False)` -> `fcnseg.engine.fast`
   step in the tables.
2. **Identity windows removed.** A 1x1 average pool (what a Flatten of an already 1x1 map or an
   adaptive pool to the map's own size converts to) is a full depthwise-convolution pass over a
   dilated map that returns its input; it is dropped. Gain: part of `fcnseg.densify` ->
   `fast(channels_last=False)`.
3. **Batch norm folded** into the convolution before it (weights rescaled at every call from
   the live parameters, so gradients still reach them): one pass over the map fewer per norm.
   Gain: the rest of `fcnseg.densify` -> `fast(channels_last=False)` on ResNet.
4. Maps read by a per-patch tail (`DenseNet.tail`) are handed over NCHW: its advanced-indexing
   gather was 4-5x slower on NHWC maps (ResNet-50: 1.5 s of 4.4 s before this fix).
5. The output is NCHW-contiguous, like `fcnseg.densify`'s.

Tried and not adopted (profiled with torch.profiler, membrane net, 256x256 unless said):
- Max pooling as the maximum of shifted views (separable, rows then columns): exact and as
  fast as channels_last `max_pool2d` forward, but its backward (`torch.maximum`) was about 10x
  slower, and it splits the gradient at ties. Separable `max_pool2d` (k x 1 then 1 x k) was
  slower than one channels_last pool.
- Space-to-batch for the dilated layers: a channels_last convolution with dilation 16 ran as
  fast as the undilated one on the same map (332 ms vs 464 ms, 48->200 3x3 on 288x288); the two
  reshuffles made it slower (537 ms).
- `torch.compile` (inductor, `fast(dense, compile=True)`): exact (max abs diff 0) and 10-15%
  faster on the membrane net at 256x256, but it compiles for over a minute per input shape on
  2 cores, so it is an option, not the default.

Where the time goes (fast engine, membrane net, 256x256, forward): the dilated convolutions
about 70% (the fc-as-conv 3x3 / dilation 16 / 48->200 layer alone about 20%), the four max
pools about 20%, ReLUs and one layout copy the rest. Forward+backward is dominated by
`convolution_backward` (about 55%).

The patch-by-patch baseline is `fcnseg.patchwise` on a channels_last copy of the classifier
(1.6-2x faster than NCHW here), batches of up to 256 patches, under `torch.inference_mode()`;
patch training accumulates gradients batch by batch. Shift-and-stitch runs the strided FCN in
the same channels_last layout as the fast engine, so the comparison is of methods, not layouts.
"""


def write_markdown(result, plot_path: Path, docs_path: Path) -> str:
    m = result["machine"]
    matmul = _matmul(result)
    gpu = m.get("gpu")
    rel_plot = os.path.relpath(plot_path, docs_path.parent)
    lines = [
        "# Benchmarks: exact dense inference and training against every other method",
        "",
        f"Generated by `python tools/bench.py{' --quick' if result['mode'] == 'quick' else ''}` "
        f"({result['mode']} run, {result['wall_s'] / 60:.1f} minutes).",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"Python {m['python']}; device **{m['device']}**" + (f" ({gpu}, cuDNN {m['cudnn']})" if gpu else "")
        + ". " + ("These are GPU numbers (CUDA events, cudnn.benchmark on)." if gpu else
                  "These are CPU numbers; no GPU was used."),
        f"- Dense float32 matmul 2048^2 in this run: "
        f"{', '.join(f'{v:.0f}' for v in result['matmul_gflops'])} GFLOP/s (start, end).",
        f"- Load average at start / end: {result['load_average_start']} / {result['load_average_end']}. "
        "The machine may be shared: absolute times are noisy, **ratios are measured within one run**.",
        "- Times are medians of repeats after one warm-up call (the warm-up also measures peak "
        "memory: resident-set growth on CPU, `torch.cuda.max_memory_allocated` on GPU). Forward "
        "passes run under `torch.inference_mode()`, one image `(1, C, side, side)`. The exact dense "
        "methods (hand conversion, fcnseg.densify, the fast engine) are timed round-robin, in a "
        "rotating order, so a load spike hits them alike.",
        "- Patch-by-patch and shift-and-stitch cost exactly linearly in the number of patches / "
        "shifts: they are timed on a random sample and scaled (marked in the notes column).",
        "- *model GFLOP/s*: the FLOP model of ALGORITHM.md section 6 (`dense.geometry`: patch FLOPs per "
        "pixel for patch-by-patch, dense FLOPs per pixel otherwise) divided by the time. *executed "
        "GFLOP/s*: the convolution FLOPs the fast engine actually runs (counted by "
        "`torch.utils.flop_counter`, including the padded border) against the matmul rate.",
        "- *max abs diff*: against `fcnseg.engine.fast` on the same input (patch-by-patch at the "
        "sampled pixels, shift-and-stitch on the last timed shift).",
        "",
        "## Targets",
        "",
        *_target_lines(result),
        "",
        f"![time and speed-up against image size]({rel_plot})",
        "",
    ]
    for net in result["nets"]:
        p = net["patch_size"]
        lines += [f"## {net['name']} (width {net['width']}, {net['source']})", "",
                  f"Patch {p[0]}x{p[1]}, {net['in_channels']} input channel(s), total stride "
                  f"{net['total_stride'][0]}; {net['flops_patch'] / 1e6:.1f} MFLOP per patch, "
                  f"{net['flops_dense_per_pixel'] / 1e3:.1f} kFLOP per pixel dense: FLOP ratio "
                  f"**{net['flop_ratio']:.0f}x**.", "", "Forward:", "", *_forward_table(net, matmul), "",
                  "Training step (masked per-pixel cross-entropy on k random pixels, forward + backward):", "",
                  *_train_table(net), ""]
    lines.append(NOTES)
    return "\n".join(lines) + "\n"


def write_plot(result, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 4.8))
    focus = next((n for n in result["nets"] if n["name"] == "membrane95"), result["nets"][0])
    sides = [r["side"] for r in focus["runs"]]
    for key, label in METHODS:
        ts = [r["forward"].get(key, {}).get("time_s") for r in focus["runs"]]
        pts = [(s, t) for s, t in zip(sides, ts) if t]
        if pts:
            ax_t.plot(*zip(*pts), marker="o", label=label)
    train = [(r["side"], row["dense"]["time_s"]) for r in focus["runs"] for row in r["train"]
             if row["k"] == r["side"] ** 2]
    if train:
        ax_t.plot(*zip(*train), marker="s", linestyle="--", label="fast engine fwd+bwd (all pixels)")
    ax_t.set(xscale="log", yscale="log", xlabel="image side (pixels)", ylabel="time (s)",
             title=f"{focus['name']}: forward time")
    ax_t.set_xticks(sides, [str(s) for s in sides])
    ax_t.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_t.legend(fontsize=7)
    for net in result["nets"]:
        s = [r["side"] for r in net["runs"]]
        fwd = [r["forward"]["patch"]["time_s"] / r["forward"]["engine_fast"]["time_s"] for r in net["runs"]]
        line, = ax_s.plot(s, fwd, marker="o", label=f"{net['name']} forward (FLOP ratio {net['flop_ratio']:.0f}x)")
        tr = [(r["side"], row["patch"]["time_s"] / row["dense"]["time_s"]) for r in net["runs"]
              for row in r["train"] if row["k"] == r["side"] ** 2]
        if tr:
            ax_s.plot(*zip(*tr), marker="s", linestyle="--", color=line.get_color(), label=f"{net['name']} fwd+bwd")
    ax_s.axhline(1500, color="gray", linewidth=0.8, linestyle=":")
    ax_s.set(xscale="log", yscale="log", xlabel="image side (pixels)", ylabel="speed-up over patch-by-patch",
             title="fcnseg.engine.fast vs batched patch-by-patch")
    all_sides = sorted({r["side"] for n in result["nets"] for r in n["runs"]})
    ax_s.set_xticks(all_sides, [str(v) for v in all_sides])
    ax_s.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_s.legend(fontsize=7)
    fig.suptitle(f"{result['machine']['cpu']} ({result['machine']['device']}), torch {result['machine']['torch']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
