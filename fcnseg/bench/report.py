"""Turn a bench.json result into the Markdown report and the plot; every verdict is computed.

The goals the verdicts test are data (targets.json beside this module); the hand-written notes
of the report live in the report itself, between NOTES_BEGIN and NOTES_END, and are carried
over when the report is regenerated.
"""
from __future__ import annotations

import json
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
MEMBRANE = "membrane95"
TARGETS_FILE = Path(__file__).with_name("targets.json")
NOTES_BEGIN = "<!-- notes: hand-written, kept when tools/bench.py rewrites this file -->"
NOTES_END = "<!-- end of notes -->"


def load_targets(path: Path = TARGETS_FILE) -> dict:
    return json.loads(Path(path).read_text())


def kept_notes(docs_path: Path) -> str:
    """The hand-written notes block of an existing report (empty when there is none)."""
    try:
        text = Path(docs_path).read_text()
    except OSError:
        return ""
    if NOTES_BEGIN not in text or NOTES_END not in text:
        return ""
    return text[text.index(NOTES_BEGIN) + len(NOTES_BEGIN): text.index(NOTES_END)].strip()


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


def find_net(result, name):
    return next((n for n in result["nets"] if n["name"] == name), None)


def find_run(net, side):
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


def target_lines(result, targets: dict | None = None) -> list[str]:
    targets = load_targets() if targets is None else targets
    matmul = matmul_rate(result)
    threads = result.get("machine", {}).get("torch_threads") or 1
    lines = []
    mem = find_net(result, MEMBRANE)
    for goal_row in targets.get("membrane_forward_speedup", []):
        side, goal = goal_row["side"], goal_row["min"]
        run = find_run(mem, side)
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
    goal = targets.get("membrane_matmul_share")
    shares = [(side, executed_share(find_run(mem, side)["forward"], run_matmul(mem, find_run(mem, side), result)))
              for side in (goal["sides"] if goal else ()) if find_run(mem, side)]
    if shares:
        loads = [_load(find_run(mem, side)) for side, _ in shares]
        lines.append(f"- Membrane dense pass >= {goal['min']} of the matmul rate measured just before it, executed "
                     f"FLOPs: {_share_verdict([s for _, s in shares], goal['min'], loads, threads)} "
                     f"({', '.join(f'{side}: {s:.2f}' for side, s in shares)}).")
        lines += [f"  {line}" for line in gap_lines(mem, mem_matmul)]
    goal = targets.get("train_speedup_at_least_flop_ratio")
    run = find_run(mem, goal["side"]) if goal else None
    if run and run["train"]:
        side = goal["side"]
        row = next((r for r in run["train"] if r["k"] == side * side), None)
        if row:
            v = row["patch"]["time_s"] / row["dense"]["time_s"]
            lines.append(f"- Forward+backward over all pixels at {side}x{side} >= the FLOP ratio "
                         f"({mem['flop_ratio']:.0f}x): {_verdict(v >= mem['flop_ratio'])} ({v:,.0f}x).")
    zoo = [(n, r) for n in result["nets"] if n["name"] != MEMBRANE and n["width"] == 1.0 for r in n["runs"]]
    goal = targets.get("zoo_matmul_share")
    if zoo and goal:
        parts = [f"{n['name']} {r['side']}x{r['side']} stride {n['output_stride']}: "
                 f"{executed_share(r['forward'], net_matmul(n, result)):.2f}" for n, r in zoo]
        named = [executed_share(r["forward"], net_matmul(n, result)) for n, r in zoo if n["name"] == goal["net"]]
        loads = [_load(r) for n, r in zoo if n["name"] == goal["net"]]
        verdict = f"{_share_verdict(named, goal['min'], loads, threads)} " if named else ""
        lines.append(f"- Zoo at width 1.0, executed share of matmul (>= {goal['min']} for {goal['net']}): "
                     f"{verdict}({'; '.join(parts)}).")
    lines += precision_target_lines(result, targets.get("reduced_precision"))
    t = result.get("tiling")
    goal = targets.get("tiling")
    if t and "peak_mb" in t and goal:
        per_px = t["time_s"] / t["side"] ** 2
        per_px_ref = t["reference_time_s"] / t["reference_side"] ** 2
        slower = per_px / per_px_ref - 1
        lines.append(f"- {t['side']}x{t['side']} through the default inference path ({t['net']}, tiles of at most "
                     f"{t['tile']} chosen from the default {t['memory_mb_budget']:.0f} MB budget): under "
                     f"{goal['max_peak_mb']} MB peak resident growth {_verdict(t['peak_mb'] < goal['max_peak_mb'])} "
                     f"({t['peak_mb']:.0f} MB, including the {t['input_mb']:.0f} MB input); per-pixel time within "
                     f"{100 * goal['max_slowdown']:.0f}% of untiled {t['reference_side']}x{t['reference_side']} "
                     f"{_verdict(slower <= goal['max_slowdown'])} "
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


def _precision_table(net) -> list[str]:
    """Reduced-precision rows beside the IEEE float32 ones of the same run."""
    rows = []
    for run in net["runs"]:
        f = run["forward"]
        for name, r in f.get("reduced", {}).items():
            patch = r.get("patch")
            patch_cells = (f"{_fmt_time(patch['time_s'])} ({patch['layout']}) | {_x(patch['time_s'] / r['time_s'])}"
                           if patch else "not timed |  ")
            rows.append(f"| {run['side']} | {name} | {_fmt_time(r['time_s'])} | "
                        f"{f['densify']['time_s'] / r['time_s']:.2f}x | {patch_cells} | "
                        f"{100 * r['label_agreement']:.2f}% | {r['max_rel_err']:.1e} ({r['max_abs_err']:.1e}) |")
    if not rows:
        return []
    return ["Reduced precision (autocast, float32 weights and accumulation; not exact, so compared with the IEEE "
            "float32 default of this run by labels and scores):", "",
            "| side | precision | densify | vs fp32 densify | patch-by-patch, same precision | speed-up vs patch | "
            "label agreement with fp32 | max score error, relative (abs) |",
            "|---:|---|---:|---:|---:|---:|---:|---:|", *rows, ""]


def precision_target_lines(result, goal) -> list[str]:
    """The reduced-precision goal: judged only where the machine runs that precision natively."""
    if not goal:
        return []
    mem = find_net(result, MEMBRANE)
    run = find_run(mem, goal["side"])
    r = run["forward"].get("reduced", {}).get(goal["precision"]) if run else None
    if r is None:
        return []
    speed = run["forward"]["densify"]["time_s"] / r["time_s"]
    head = (f"- Membrane dense pass at {goal['side']}x{goal['side']} in {goal['precision']} >= "
            f"{goal['min_speedup_vs_fp32']}x its IEEE float32 time, labels agreeing at >= "
            f"{100 * goal['min_label_agreement']:.1f}%: ")
    native = result.get("precision", {}).get("native", {}).get(goal["precision"])
    measured = f"({speed:.2f}x, labels {100 * r['label_agreement']:.2f}%)"
    if goal.get("only_where_native") and native is False:
        return [head + f"**not applicable on this machine**: it has no native {goal['precision']} (emulated, "
                f"so slower than float32) {measured}."]
    ok = speed >= goal["min_speedup_vs_fp32"] and r["label_agreement"] >= goal["min_label_agreement"]
    return [head + f"{_verdict(ok)} {measured}."]


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


def precision_line(result) -> str:
    """Which float32 math the exact rows ran with, and what the reduced rows are."""
    p = result.get("precision")
    if not p:
        return "- Precision: not recorded (a results file from before precision was recorded)."
    math = p.get("float32_math", {})
    flags = ", ".join(f"{k} {v}" for k, v in math.items() if k != "tf32")
    native = ", ".join(f"{k}: {'native' if v else 'emulated'}" for k, v in p.get("native", {}).items())
    reduced = ", ".join(p.get("reduced", [])) or "none"
    return (f"- Precision: every exact row ran in **{p['exact']}** (TF32 {'on' if math.get('tf32') else 'off'}; "
            f"{flags}); reduced-precision rows: {reduced} ({native}).")


def write_markdown(result, plot_path: Path, docs_path: Path, notes: str | None = None) -> str:
    """notes: the hand-written block; None keeps the one of the report already at docs_path."""
    notes = kept_notes(docs_path) if notes is None else notes
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
                  "same tables for a GPU into results/cuda/)."),
        precision_line(result),
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
    lines += [NOTES_BEGIN, "", notes.strip(), "", NOTES_END, ""]
    for net in result["nets"]:
        p = net["patch_size"]
        matmul = net_matmul(net, result)
        lines += [f"## {net['name']} (width {net['width']}, {net['source']}, output stride {net['output_stride']})", "",
                  f"Patch {p[0]}x{p[1]}, {net['in_channels']} input channel(s), total stride "
                  f"{net['total_stride'][0]}; {net['flops_patch'] / 1e6:.1f} MFLOP per patch, "
                  f"{net['flops_dense_per_pixel'] / 1e3:.1f} kFLOP per output pixel dense: FLOP ratio "
                  f"**{net['flop_ratio']:.0f}x**. Matmul just before it: "
                  + ", ".join(f"{n}^2 {v:.0f} GFLOP/s" for n, v in net.get("matmul_gflops", {}).items())
                  + f"; load average {net['runs'][0].get('load_average', ['?'])[0]}.", "", "Forward:", "",
                  *_forward_table(net, matmul), "",
                  *_precision_table(net)]
        if any(r["train"] for r in net["runs"]):
            lines += ["Training step (masked per-pixel cross-entropy on k random pixels, forward + backward):", "",
                      *_train_table(net), ""]
        if net.get("profiles"):
            lines += ["### Where the time goes (default dense graph, one node at a time)", "",
                      *_profile_tables(net, matmul)]
    return "\n".join(lines) + "\n"


def speed_table(result) -> list[str]:
    """The README's speed table (membrane net, forward) from a results file."""
    mem = find_net(result, MEMBRANE)
    matmul = net_matmul(mem, result) if mem else matmul_rate(result)
    rows = ["| image | batched patch-by-patch (faster layout) | shift-and-stitch | hand conversion (NCHW) | "
            "densify(optimize=False) | fcnseg.densify | speed-up vs patch | share of matmul |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in mem["runs"] if mem else []:
        f = run["forward"]
        pt, _ = patch_time(f)
        d = f["densify"]["time_s"]
        matmul = run_matmul(mem, run, result)
        other = [_fmt_time(f.get(k, {}).get("time_s")) for k in ("shift_stitch", "hand", "densify_plain")]
        rows.append(f"| {run['side']}x{run['side']} | {_fmt_time(pt)} | {other[0]} | {other[1]} | {other[2]} "
                    f"| {_fmt_time(d)} | {_x(pt / d)} | {executed_share(f, matmul):.2f} |")
    return rows
