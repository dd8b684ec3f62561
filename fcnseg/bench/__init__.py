"""The benchmark behind docs/benchmarks.md: the methods it compares, how it measures them, the
per-node profile of a dense graph, and the report. `python tools/bench.py` runs it.

- methods: batched patch-by-patch (NCHW and channels_last), the hand conversion,
  shift-and-stitch, fcnseg.densify plain and default, and the training steps;
- measure: timers (wall clock, CUDA events), peak memory, the machine's matmul rate;
- profile: time and FLOPs of every node of a dense graph;
- run: the configured run (`main` is the command line); report: Markdown tables and the plot.
"""
