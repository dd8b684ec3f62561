"""Benchmark: fcnseg's dense network against every other way of computing the same per-pixel output.

    python tools/bench.py            # full run (about 15 minutes on 2 CPU cores)
    python tools/bench.py --quick    # 1-2 minute smoke run into results/quick/
    python tools/bench.py --device cuda    # the GPU tables into results/cuda/
    python tools/bench.py --device cuda --precision fp32 bf16 fp16 tf32   # more reduced-precision rows

Every exact row runs in IEEE fp32 (no TF32); bf16 rows (the default) come from the same run.
Settings: fcnseg/bench/settings.py (conf/bench.yaml lists the defaults).

What it measures and how: fcnseg/bench/ (`python tools/bench.py --help`).
"""
from pathlib import Path

from fcnseg.bench.run import main

if __name__ == "__main__":
    main(root=Path(__file__).resolve().parent.parent)
