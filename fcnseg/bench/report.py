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


def patch_time(fwd) -> tuple[float, str]:
    """The faster batched patch-by-patch layout (the baseline every speed-up is against)."""
    key = min(("patch_nchw", "patch_cl"), key=lambda k: fwd[k]["time_s"])
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


def target_lines(result) -> list[str]:
    matmul = matmul_rate(result)
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
    shares = [(side, executed_share(_run(mem, side)["forward"], matmul)) for side in (512, 1024) if _run(mem, side)]
    if shares:
        lines.append(f"- Membrane dense pass >= 0.8 of the run's matmul rate ({matmul:.0f} GFLOP/s), executed "
                     f"FLOPs: {_verdict(all(s >= 0.8 for _, s in shares))} "
                     f"({', '.join(f'{side}: {s:.2f}' for side, s in shares)}).")
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
                 f"{executed_share(r['forward'], matmul):.2f}" for n, r in zoo]
        vgg = [executed_share(r["forward"], matmul) for n, r in zoo if n["name"] == "vgg16"]
        verdict = f"{_verdict(min(vgg) >= 0.6)} " if vgg else ""
        lines.append(f"- Zoo at width 1.0, executed share of matmul (>= 0.6 for vgg16): {verdict}"
                     f"({'; '.join(parts)}).")
    t = result.get("tiling")
    if t and "peak_mb" in t:
        per_px = t["time_s"] / t["side"] ** 2
        per_px_ref = t["reference_time_s"] / t["reference_side"] ** 2
        slower = per_px / per_px_ref - 1
        lines.append(f"- {t['side']}x{t['side']} through the default inference path ({t['net']}, tile "
                     f"{t['tile']} chosen from the default {t['memory_mb_budget']:.0f} MB budget): under 2 GB peak "
                     f"resident growth {_verdict(t['peak_mb'] < 2048)} ({t['peak_mb']:.0f} MB, including the "
                     f"{t['input_mb']:.0f} MB input); per-pixel time within 10% of untiled "
                     f"{t['reference_side']}x{t['reference_side']} {_verdict(slower <= 0.10)} "
                     f"({t['time_s']:.1f} s = {per_px * 1e6:.2f} us/pixel vs {per_px_ref * 1e6:.2f}: "
                     f"{100 * slower:+.0f}%). Tiled == untiled to {t['max_abs_diff_256']:.1e} on 256x256.")
    return lines


def _forward_table(net, matmul) -> list[str]:
    rows = ["| side | method | time | vs patch | MP/s | model GFLOP/s | executed GFLOP/s (share of matmul) | "
            "peak MB | max abs diff | note |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    s = net["output_stride"]
    for run in net["runs"]:
        f, side = run["forward"], run["side"]
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


def write_markdown(result, plot_path: Path, docs_path: Path, notes: str = "") -> str:
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
        f"({result['mode']} run, {result['wall_s'] / 60:.1f} minutes).",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"Python {m['python']}; device **{m['device']}**" + (f" ({gpu}, cuDNN {m['cudnn']})" if gpu else "")
        + ". " + ("These are GPU numbers (CUDA events, cudnn.benchmark on)." if gpu else
                  "These are CPU numbers; no GPU was used (`python tools/bench.py --device cuda` writes the "
                  "same tables for a GPU, with float16/bfloat16 autocast timed apart, into results/cuda/)."),
        f"- Float32 matmul in this run (GFLOP/s, start; end): {mm}. *Share of matmul* below is against "
        f"{matmul:.0f} GFLOP/s, the faster size averaged over start and end.",
        f"- Load average (1 min) at start / end: {result['load_average_start'][0]:.2f} / "
        f"{result['load_average_end'][0]:.2f}; at each run: {', '.join(run_loads)}. The machine may be shared: "
        "absolute times are noisy, **ratios are measured within one run**.",
        "- Times are medians of repeats after one warm-up call (the warm-up also measures peak memory: "
        "resident-set growth on CPU, `torch.cuda.max_memory_allocated` on GPU). Forward passes run under "
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
        lines += [f"## {net['name']} (width {net['width']}, {net['source']}, output stride {net['output_stride']})", "",
                  f"Patch {p[0]}x{p[1]}, {net['in_channels']} input channel(s), total stride "
                  f"{net['total_stride'][0]}; {net['flops_patch'] / 1e6:.1f} MFLOP per patch, "
                  f"{net['flops_dense_per_pixel'] / 1e3:.1f} kFLOP per output pixel dense: FLOP ratio "
                  f"**{net['flop_ratio']:.0f}x**.", "", "Forward:", "", *_forward_table(net, matmul), "",
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
