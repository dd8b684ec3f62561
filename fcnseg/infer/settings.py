"""Typed inference settings: the one place where every default of a labelling run lives.

`InferenceSettings.from_dict(cfg)` turns the plain dict a config system produces (the keys
of conf/infer.yaml, as tools/infer.py passes them) into the dataclass, refusing unknown keys
and impossible values with a `SettingsError` (fcnseg.settings) that names the key. The YAML
repeats these defaults so `--help` shows them; a test holds it to this dataclass key by key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from fcnseg.data.io import MAX_IMAGE_PIXELS
from fcnseg.settings import (
    AUTO,
    SettingsError,
    build_section,
    check_auto_or_positive,
    check_choice,
    check_device,
    check_positive,
    check_precision,
)

from .stream import LARGE_IMAGE_PIXELS
from .summary import FORMATS as SUMMARY_FORMATS

_REQUIRED = ("checkpoint", "input", "output")


@dataclass
class InferenceSettings:
    checkpoint: str
    input: str                             # a folder (searched recursively), one image, or a glob
    output: str                            # results mirror the input tree here
    tile_size: int | None = None           # image pixels per tile side; None: from memory_mb; 0: untiled
    memory_mb: float = 2048.0              # budget of one forward pass when tile_size is None
    overwrite: bool = False
    device: str = AUTO                     # auto | cpu | cuda | cuda:<index>
    batch_size: int = 8                    # small images of one size stacked per pass (large ones: 1)
    save_overlay: bool = False
    save_scores: bool = False              # float16 (K, H/s, W/s) .npy
    check: bool = False                    # compare with the patch-by-patch reference on `region`
    region: Sequence[int] | None = None    # check: (top, left, height, width); None: centre 32x32
    output_stride: int = 1
    head: int | str | None = None          # several outputs: the one to label with; "all": every head's scores
    precision: str = AUTO                  # auto | fp32 (IEEE) | tf32 | bf16 | fp16: fcnseg.runtime.precision
    channels_last: Any = AUTO              # auto (= true) | true | false
    summary: Sequence[str] = SUMMARY_FORMATS
    overlay_alpha: float = 0.5
    patch_batch_size: int = 256            # check: patches per classifier call
    dist_timeout_s: float = 7 * 24 * 3600  # how long rank 0 waits for the slowest rank
    read_workers: Any = AUTO               # threads decoding images ahead | auto: min(4, CPUs)
    read_ahead: int = 4                    # decoded images waiting for the device, at most
    progress: bool = True                  # a progress bar with ETA (one per rank under torchrun)
    large_image_pixels: int = LARGE_IMAGE_PIXELS  # above: read by region, labels to a pyramidal BigTIFF, resumable
    max_image_pixels: int | None = MAX_IMAGE_PIXELS  # largest image decoded whole (PNG, JPEG, ...); None: no limit
    level: int = 0                         # pyramid level of TIFF/OME-TIFF/whole-slide inputs (0: full resolution)

    def __post_init__(self):
        for key in _REQUIRED:
            value = getattr(self, key)
            if not isinstance(value, (str, os.PathLike)) or not str(value) or str(value) == "???":
                raise SettingsError(key, f"required; give {key}=PATH (got {value!r})")
        for key in ("overwrite", "save_overlay", "save_scores", "check", "progress"):
            check_choice(key, getattr(self, key), (True, False))
        if self.tile_size is not None and (isinstance(self.tile_size, bool) or
                                           not isinstance(self.tile_size, int) or self.tile_size < 0):
            raise SettingsError("tile_size", f"must be null (from memory_mb), 0 (untiled) or a "
                                             f"positive integer, got {self.tile_size!r}")
        check_auto_or_positive("memory_mb", self.memory_mb, float)
        if self.memory_mb == AUTO:
            raise SettingsError("memory_mb", "must be a positive number of MB")
        check_device("device", self.device)
        check_positive("batch_size", self.batch_size)
        check_positive("output_stride", self.output_stride)
        check_positive("patch_batch_size", self.patch_batch_size)
        check_positive("read_ahead", self.read_ahead)
        check_positive("large_image_pixels", self.large_image_pixels)
        check_positive("max_image_pixels", self.max_image_pixels, allow_none=True)
        if isinstance(self.level, bool) or not isinstance(self.level, int) or self.level < 0:
            raise SettingsError("level", f"must be 0 (full resolution) or a positive pyramid level, got {self.level!r}")
        check_precision("precision", self.precision)
        check_choice("channels_last", self.channels_last, (AUTO, True, False))
        if self.region is not None and (len(self.region) != 4 or
                                        not all(isinstance(v, int) for v in self.region)):
            raise SettingsError("region", f"must be [top, left, height, width], got {list(self.region)}")
        if not self.summary or any(f not in SUMMARY_FORMATS for f in self.summary):
            raise SettingsError("summary", f"must be a non-empty list of {', '.join(SUMMARY_FORMATS)}, "
                                           f"got {list(self.summary)}", SUMMARY_FORMATS)
        if not 0.0 <= float(self.overlay_alpha) <= 1.0:
            raise SettingsError("overlay_alpha", f"must be in [0, 1], got {self.overlay_alpha}")
        if not float(self.dist_timeout_s) > 0:
            raise SettingsError("dist_timeout_s", f"must be positive, got {self.dist_timeout_s}")
        if self.read_workers != AUTO and (isinstance(self.read_workers, bool) or
                                          not isinstance(self.read_workers, int) or self.read_workers < 0):
            raise SettingsError("read_workers", f"must be auto, 0 (decode on the main thread) or a "
                                                f"positive integer, got {self.read_workers!r}")

    @classmethod
    def from_dict(cls, values: dict) -> "InferenceSettings":
        """From the plain dict of a config system; unknown and missing keys are refused by name."""
        values = dict(values or {})
        missing = [k for k in _REQUIRED if k not in values]
        if missing:
            raise SettingsError(missing[0], f"required; give {missing[0]}=PATH")
        return build_section("", cls, values)

    @property
    def workers(self) -> int:
        """Decoding threads: read_workers, or min(4, CPUs) for auto."""
        return min(4, os.cpu_count() or 1) if self.read_workers == AUTO else int(self.read_workers)

    @property
    def use_channels_last(self) -> bool:
        return self.channels_last is not False
