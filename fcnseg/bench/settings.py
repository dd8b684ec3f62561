"""The benchmark's settings (tools/bench.py's flags), in the project's one settings style.

conf/bench.yaml repeats the defaults below (a test holds the two together); the command line
of tools/bench.py sets them (`--no-tiling` sets tiling to false, `--precision fp32 bf16`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fcnseg.settings import SettingsError, check_device, check_positive, check_precision


@dataclass
class BenchSettings:
    quick: bool = False            # the small smoke run into results/quick/
    out_dir: Any = None            # bench.json, bench.png; null: results/ (quick: results/quick, CUDA: results/cuda)
    docs: Any = None               # the report; null: docs/benchmarks.md (quick or CUDA: <out_dir>/benchmarks.md)
    nets: Any = None               # only these networks of the run plan; null: all
    sizes: Any = None              # image sides instead of the plan's; null: the plan's
    device: str = "auto"           # auto | cpu | cuda | cuda:<index>
    threads: Any = None            # torch.set_num_threads for the whole run; null: PyTorch's default
    # the exact rows always run in fp32 (IEEE); every other precision listed adds rows timed beside
    # them in the same run (auto: the machine's rule, see fcnseg.runtime.precision)
    precision: tuple = ("fp32", "bf16")
    compile: bool = False          # also time densify(optimize=Optimizations(compile=True))
    tiling: bool = True            # the tiled-inference measurement
    tiling_only: bool = False
    profile: bool = True           # the per-node profile of the default dense graph
    add: bool = False              # merge into an existing <out_dir>/bench.json (same-name networks replaced)
    report_only: bool = False      # rewrite the report and plot from <out_dir>/bench.json

    def __post_init__(self):
        check_device("device", self.device)
        check_positive("threads", self.threads, allow_none=True)
        self.precision = tuple(self.precision)
        for p in self.precision:
            check_precision("precision", p)
        if "fp32" not in self.precision:
            raise SettingsError("precision", f"got {list(self.precision)}; the list must hold fp32, the IEEE "
                                "rows every other precision is compared with (e.g. --precision fp32 bf16)")
        for key in ("nets", "sizes"):
            value = getattr(self, key)
            if value is not None and not value:
                raise SettingsError(key, "is an empty list; leave it out for the whole plan")
        if self.sizes is not None:
            for side in self.sizes:
                check_positive("sizes", side)

    @property
    def reduced(self) -> tuple:
        """The precisions timed beside the IEEE float32 rows."""
        return tuple(p for p in self.precision if p != "fp32")
