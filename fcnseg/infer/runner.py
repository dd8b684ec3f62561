"""Label every image of a folder: resumable, atomic, batched, tiled, sharded over ranks.

    settings = InferenceSettings(checkpoint="best.pt", input="slides/", output="labels/")
    result = run_inference(settings)      # result.failed > 0 -> exit non-zero

Per image: skip it when all requested results exist (unless overwrite), read it (a
broken file becomes a "failed" row, the run goes on), convert it to the checkpoint's
channels, predict (small images batched together, large ones tiled with the exact
halo), write scores, overlay and finally the label map, each atomically. Under
torchrun, rank r takes files r, r + world, ...; every rank writes a partial summary
and rank 0 merges them after a barrier.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from fcnseg import runtime
from fcnseg.data.io import read_image
from fcnseg.runtime import remove_stale_temps

from . import summary as summ
from .model import Predictor, load_predictor, predict_whole
from .outputs import ScoresFile, save_labels, save_overlay, save_scores, to_image_size
from .paths import InputError, InputFile, check_output_path, find_collisions, find_inputs
from .tiling import (auto_tile_size, build_window, dense_padding, forward_windows, label_dtype, plan_tiles,
                     predict_tiled)

@dataclass
class InferenceSettings:
    checkpoint: str
    input: str
    output: str
    tile_size: int | None = None          # image pixels per tile side; None: from memory_mb; <=0: untiled
    memory_mb: float = 2048.0             # budget for one forward pass when tile_size is None
    overwrite: bool = False
    device: str = "auto"                  # auto | cpu | cuda | cuda:<index>
    batch_size: int = 8                   # small images (or tiles) per forward pass
    save_overlay: bool = False
    save_scores: bool = False             # float16 (K, H/s, W/s) .npy
    check: bool = False                   # compare with the patch-by-patch reference on `region`, label nothing
    region: Sequence[int] | None = None   # check: (top, left, height, width); None: centre 32x32
    output_stride: int = 1
    head: int | str | None = None         # several outputs: the one to label with (name or index); None: first
    amp: bool = True                      # mixed precision on CUDA (bf16 where supported, else fp16)
    channels_last: bool = True
    summary: Sequence[str] = ("csv", "json")
    overlay_alpha: float = 0.5
    patch_batch_size: int = 256           # check: patches per classifier call
    dist_timeout_s: float = 7 * 24 * 3600  # how long rank 0 waits for the slowest rank

    def validate(self) -> None:
        if not isinstance(self.check, bool):
            raise ValueError(f"check must be true or false, got {self.check!r}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.tile_size is None and not float(self.memory_mb) > 0:
            raise ValueError("tile_size=null needs a positive memory_mb to choose the tile size")
        if int(self.output_stride) < 1:
            raise ValueError(f"output_stride must be >= 1, got {self.output_stride}")
        if self.region is not None and len(self.region) != 4:
            raise ValueError(f"region must be [top, left, height, width], got {list(self.region)}")
        if not self.summary or any(f not in summ.FORMATS for f in self.summary):
            raise ValueError(f"summary must be a non-empty list of {summ.FORMATS}, got {list(self.summary)}")
        if not self.output:
            raise ValueError("output= is empty; give the folder for the results")


@dataclass
class RunResult:
    rows: list[dict]                       # this rank's rows; every rank's on rank 0
    summary_files: list[Path] = field(default_factory=list)
    tile_size: int | None = None

    @property
    def failed(self) -> int:
        return sum(r["status"] == "failed" for r in self.rows)


def _error_text(e: BaseException) -> str:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return f"CUDA out of memory ({e}); set a smaller tile_size or memory_mb, or batch_size=1"
    return str(e) if isinstance(e, (ValueError, InputError)) else f"{type(e).__name__}: {e}"


@dataclass
class _Job:
    item: InputFile
    todo: list[str]               # result kinds still to write: scores, overlay, labels
    image: np.ndarray | None      # decoded (H, W, C), kept only for the overlay
    raw: np.ndarray               # in the model's channels, raw dtype
    height: int
    width: int
    seconds: float                # time spent on this image so far


class _Run:
    def __init__(self, cfg: InferenceSettings, pred: Predictor, out_dir: Path, tile: int | None,
                 log: Callable[[str], None]):
        self.cfg, self.pred, self.out_dir, self.tile, self.log = cfg, pred, out_dir, tile, log
        self.rows: list[dict] = []
        self.pending: dict[tuple[int, int], list[tuple[_Job, torch.Tensor]]] = {}
        self.kinds = ["labels"] + (["overlay"] if cfg.save_overlay else []) + \
                     (["scores"] if cfg.save_scores else [])
        self.amp = bool(cfg.amp)  # runtime.amp_dtype: full precision on the CPU whatever this says
        self.n_total = 0

    # -- bookkeeping ---------------------------------------------------------------------
    def _add(self, r: dict) -> None:
        self.rows.append(r)
        msg = f"[{len(self.rows)}/{self.n_total}] {r['file']}: {r['status']}"
        if r["status"] == "ok":
            msg += f" ({r['seconds']:.2f} s)"
        if r["error"]:
            msg += f" - {r['error']}"
        self.log(msg)

    def _fail(self, job_or_item, e: BaseException, seconds: float = 0.0) -> None:
        item = job_or_item.item if isinstance(job_or_item, _Job) else job_or_item
        h = getattr(job_or_item, "height", None)
        w = getattr(job_or_item, "width", None)
        self._add(summ.row(str(item.rel), "failed", height=h, width=w,
                           seconds=seconds + getattr(job_or_item, "seconds", 0.0),
                           error=_error_text(e)))

    # -- per file ------------------------------------------------------------------------
    def open(self, item: InputFile, clash: str | None) -> _Job | None:
        t0 = time.perf_counter()
        try:
            if clash is not None:
                raise InputError(f"its results would overwrite those of {clash} (same name "
                                 f"without extension in the same folder); rename one of them")
            paths = {k: item.output(self.out_dir, k) for k in self.kinds}
            for p in paths.values():
                check_output_path(p, self.out_dir)
                remove_stale_temps(p)
            todo = [k for k in self.kinds if self.cfg.overwrite or not paths[k].exists()]
            if not self.cfg.check and not todo:
                self._add(summ.row(str(item.rel), "skipped", output=item.output_rel("labels"),
                                   error="results exist (overwrite=true to redo)"))
                return None
            image = read_image(item.path)
            raw = self.pred.prepare(image)
            keep = image if "overlay" in todo else None
            return _Job(item, todo, keep, raw, image.shape[0], image.shape[1],
                        time.perf_counter() - t0)
        except Exception as e:
            self._fail(item, e, time.perf_counter() - t0)
            return None

    def process(self, job: _Job) -> None:
        if self.cfg.check:
            return self._check_against_patchwise(job)
        t0 = time.perf_counter()
        pred = self.pred
        try:
            if pred.dense is None:
                p = predict_whole(pred, job.raw, amp=self.amp, channels_last=self.cfg.channels_last)
                return self._finish(job, p.labels, p.scores, t0)
            plan = plan_tiles(job.height, job.width, pred.dense.patch_size, pred.output_stride,
                              self.tile)
            if len(plan.origins) == 1:  # fits one window: batch it with images of its size
                win = build_window(job.raw, *plan.window_indices(0, 0),
                                   *dense_padding(pred.dense), pred.transform)
                job.seconds += time.perf_counter() - t0
                group = self.pending.setdefault(tuple(win.shape), [])
                group.append((job, win))
                if len(group) >= self.cfg.batch_size:
                    self._flush(tuple(win.shape))
                elif sum(map(len, self.pending.values())) > 4 * self.cfg.batch_size:
                    self._flush(max(self.pending, key=lambda k: len(self.pending[k])))
                return
            scores_file = None
            if "scores" in job.todo:
                scores_file = ScoresFile(job.item.output(self.out_dir, "scores"),
                                         (pred.score_channels, plan.rows, plan.cols))
            try:
                p = predict_tiled(pred.dense, job.raw, self.tile, transform=pred.transform,
                                  batch_size=self.cfg.batch_size, amp=self.amp,
                                  channels_last=self.cfg.channels_last, return_scores=False,
                                  label_channels=pred.label_channels,
                                  scores_out=None if scores_file is None else scores_file.array)
            except BaseException as e:
                if scores_file is not None:
                    scores_file.abort(e)
                raise
            if scores_file is not None:
                scores_file.close()
                job.todo.remove("scores")
            self._finish(job, p.labels, None, t0)
        except Exception as e:
            self._fail(job, e, time.perf_counter() - t0)

    def _flush(self, key) -> None:
        group = self.pending.pop(key, [])
        if not group:
            return
        t0 = time.perf_counter()
        try:
            out = forward_windows(self.pred.dense, torch.stack([w for _, w in group]),
                                  amp=self.amp, channels_last=self.cfg.channels_last)
            out = out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
            # head=all: the labels are the first head's argmax
            labels = out[:, :self.pred.label_channels].argmax(1).to("cpu", label_dtype(out.shape[1]))  # (B, h, w)
        except Exception as e:
            share = (time.perf_counter() - t0) / len(group)
            for job, _ in group:
                self._fail(job, e, share)
            return
        share = (time.perf_counter() - t0) / len(group)
        for (job, _), lab, sc in zip(group, labels, out):
            job.seconds += share
            try:
                g = (-(-job.height // self.pred.output_stride), -(-job.width // self.pred.output_stride))
                if tuple(lab.shape) != g:
                    raise RuntimeError(f"the network gave {tuple(lab.shape)} outputs, expected {g}")
                self._finish(job, lab, sc, time.perf_counter())
            except Exception as e:
                self._fail(job, e)

    def flush_all(self) -> None:
        for key in list(self.pending):
            self._flush(key)

    def _finish(self, job: _Job, labels: torch.Tensor, scores, t0: float) -> None:
        """Write what is still to write; the label map last (its presence marks the image done)."""
        it, out = job.item, self.out_dir
        if "scores" in job.todo and scores is not None:
            save_scores(it.output(out, "scores"), scores)
        grid = labels.numpy()
        full = to_image_size(grid, job.height, job.width, self.pred.output_stride)
        if "overlay" in job.todo:
            save_overlay(it.output(out, "overlay"), job.image, full, self.pred.palette,
                         self.cfg.overlay_alpha)
        if "labels" in job.todo:
            save_labels(it.output(out, "labels"), full, self.pred.palette)
        job.image = job.raw = None
        self._add(summ.row(str(it.rel), "ok", output=it.output_rel("labels"), height=job.height,
                           width=job.width, seconds=job.seconds + time.perf_counter() - t0))

    # -- check=true -------------------------------------------------------------------------
    def _check_against_patchwise(self, job: _Job) -> None:
        """Patch-by-patch reference on a small region vs the dense result there."""
        import fcnseg
        t0 = time.perf_counter()
        pred = self.pred
        try:
            if pred.dense is None:
                raise ValueError("check=true needs a patch classifier; this checkpoint holds an "
                                 "already dense network (no patch size) and has no patch reference")
            H, W = job.height, job.width
            region = self.cfg.region
            if region is None:  # the centre 32 x 32 (or the whole image if smaller)
                h, w = min(32, H), min(32, W)
                region = ((H - h) // 2, (W - w) // 2, h, w)
            region = tuple(int(v) for v in region)
            d = predict_tiled(pred.dense, job.raw, self.tile, transform=pred.transform,
                              region=region, batch_size=self.cfg.batch_size, channels_last=self.cfg.channels_last)
            s = pred.output_stride
            rows = (d.row0 + torch.arange(d.labels.shape[0])) * s
            cols = (d.col0 + torch.arange(d.labels.shape[1])) * s
            pix = torch.cartesian_prod(rows, cols)  # (M, 2) pixels (i, j) on the output grid
            x = pred.transform(job.raw)[None]  # (1, C, H, W)
            p = next(pred.model.parameters())
            dense = d.scores.reshape(1, d.scores.shape[0], -1)  # (1, K, M), pixels in `pix` order
            # the reference follows the checkpoint's patch rule, whatever the dense network says
            result = fcnseg.compare_dense(pred.dense, pred.model, x.to(p.device, p.dtype), pix,
                                          dense_scores=dense, batch_size=self.cfg.patch_batch_size,
                                          patch_size=pred.patch_size, pad_mode=pred.pad_mode,
                                          pad_value=pred.pad_value)
            diff, mism = result.max_abs, result.label_mismatches
            self.log(f"{job.item.rel}: region {region}, {pix.shape[0]} pixels: max |dense - patch| "
                     f"= {diff:.3g}, labels differing: {mism}")
            self._add(summ.row(str(job.item.rel), "ok", height=H, width=W,
                               seconds=job.seconds + time.perf_counter() - t0,
                               region=" ".join(map(str, region)), pixels=int(pix.shape[0]),
                               max_abs_diff=diff, label_mismatches=mism))
        except Exception as e:
            self._fail(job, e, time.perf_counter() - t0)


def resolve_tile_size(cfg: InferenceSettings, pred: Predictor) -> int | None:
    if pred.dense is None:
        return None
    if cfg.tile_size is not None:
        return int(cfg.tile_size)
    # batch_size windows per pass (small images or tiles of a large one) share the budget
    return auto_tile_size(pred.dense, pred.in_channels, cfg.memory_mb, batch_size=cfg.batch_size,
                          amp=bool(cfg.amp),
                          channels_last=cfg.channels_last)


def run_inference(cfg: InferenceSettings, *, predictor: Predictor | None = None,
                  log: Callable[[str], None] = print) -> RunResult:
    """Run over every input file; returns the rows (all ranks' on rank 0) and summary paths."""
    cfg.validate()
    out_dir = Path(os.path.abspath(cfg.output))
    root, items = find_inputs(cfg.input, out_dir)
    rank, world, _ = runtime.dist_env()
    clash = find_collisions(items)
    mine = [items[i] for i in runtime.shard(len(items), rank, world)]
    out_dir.mkdir(parents=True, exist_ok=True)
    pred = predictor or load_predictor(cfg.checkpoint, device=cfg.device,
                                       output_stride=cfg.output_stride,
                                       channels_last=cfg.channels_last, head=cfg.head)
    tile = resolve_tile_size(cfg, pred)
    tag = f"rank {rank}/{world}: " if world > 1 else ""
    log(f"{tag}{len(mine)} of {len(items)} images under {root} -> {out_dir} "
        f"(device {pred.device}, tile_size {tile if tile else 'whole image'}, "
        f"output_stride {pred.output_stride})")
    run = _Run(cfg, pred, out_dir, tile, lambda m: log(tag + m))
    run.n_total = len(mine)
    with runtime.reuse_host_memory(pred.device):     # each image's maps reuse the pages of the last one's
        for item in mine:
            job = run.open(item, clash.get(str(item.rel)))
            if job is not None:
                run.process(job)
        run.flush_all()
    rows = run.rows
    if world > 1:
        summ.write_partial(out_dir, rank, rows)
        runtime.barrier(cfg.dist_timeout_s)
        if rank != 0:
            return RunResult(rows, [], tile)
        rows = summ.merge_partials(out_dir, world)
    files = summ.write_summary(out_dir, rows, tuple(cfg.summary))
    c = summ.counts(rows)
    log(f"{tag}done: {c['ok']} ok, {c['skipped']} skipped, {c['failed']} failed; summary in "
        f"{', '.join(str(f) for f in files)}")
    return RunResult(rows, files, tile)
