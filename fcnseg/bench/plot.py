"""The benchmark's plot: time against image size, and the speed-up over patch-by-patch."""
from __future__ import annotations

from pathlib import Path

from fcnseg.extras import require

from .report import MEMBRANE, METHODS, find_net, patch_time


def write_plot(result, path: Path) -> None:
    matplotlib = require("matplotlib", "the benchmark's plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if not result["nets"]:
        return
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 4.8))
    focus = find_net(result, MEMBRANE) or result["nets"][0]
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
