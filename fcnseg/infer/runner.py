"""Label every image of a folder: pipelined, resumable, atomic, batched, tiled, shared over ranks.

    settings = InferenceSettings(checkpoint="best.pt", input="slides/", output="labels/")
    result = run_inference(settings)      # result.failed > 0 -> exit non-zero

Rank 0 walks the input once, deletes the temporaries killed runs left (one scan per output
folder) and, under torchrun, splits the files between the ranks by pixel count read from
their headers (largest first, to the least-loaded rank) and sends each rank its share.
Per image: skip it when all requested results exist (unless overwrite); decode it in a
reader thread ahead of the device (a broken file becomes a "failed" row, the run goes
on); predict with the Predictor (small images of one size stacked into one pass, larger
ones alone, tile by tile); write scores, overlay and finally the label map, each
atomically, in the writer thread. Every row goes to this rank's journal the moment it is
known; at the end rank 0 merges the journals (after a barrier) into summary.csv/json.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import torch

from fcnseg import runtime
from fcnseg.data.regions import open_image
from fcnseg.extras import require
from fcnseg.runtime.files import remove_stale_temps_in

from . import summary as summ
from .model import Predictor, load_predictor
from .outputs import ScoresFile, save_labels, save_overlay, save_scores
from .paths import (
    InputError,
    InputFile,
    balance_by_pixels,
    check_output_path,
    find_collisions,
    find_inputs,
    image_pixels,
)
from .pipeline import Writer, read_ahead
from .settings import InferenceSettings
from .stream import file_identity, is_large, label_large_image, large_output_path, remove_leftover_work
from .tiling import predict_tiled


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


def result_kinds(cfg: InferenceSettings) -> list[str]:
    return ["labels"] + (["overlay"] if cfg.save_overlay else []) + (["scores"] if cfg.save_scores else [])


def _is_done(cfg: InferenceSettings, item: InputFile, out_dir: Path) -> bool:
    """Every requested result exists, under the name of an ordinary or of a large image."""
    if cfg.check or cfg.overwrite:
        return False
    paths = [item.output(out_dir, k) for k in result_kinds(cfg)]
    return all(p.exists() for p in paths) or all(large_output_path(p, k).exists()
                                                 for p, k in zip(paths, result_kinds(cfg)))


def _large_rel(item: InputFile) -> str:
    return str(large_output_path(PurePosixPath(item.output_rel("labels")), "labels"))


@dataclass
class _Job:
    item: InputFile
    todo: list[str]               # result kinds still to write: scores, overlay, labels
    image: np.ndarray | None      # decoded (H, W, C), kept only for the overlay
    raw: np.ndarray               # in the model's channels, raw dtype
    height: int
    width: int
    seconds: float                # time spent on this image so far
    source: object = None         # a large image: its ImageSource (read by region), not decoded
    paths: dict | None = None     # a large image: kind -> result path (fcnseg.infer.stream)


class _Run:
    def __init__(self, cfg: InferenceSettings, pred: Predictor, out_dir: Path, journal: summ.Journal,
                 writer: Writer, log: Callable[[str], None], progress=None):
        self.cfg, self.pred, self.out_dir, self.log = cfg, pred, out_dir, log
        self.journal, self.writer, self.progress = journal, writer, progress
        self.pending: dict[tuple, list[_Job]] = {}
        self.kinds = result_kinds(cfg)
        self.n_done, self.n_total = 0, 0
        self._lock = threading.Lock()

    # -- bookkeeping (any thread) ----------------------------------------------------------
    def _add(self, r: dict) -> None:
        self.journal.append(r)
        with self._lock:
            self.n_done += 1
            msg = f"[{self.n_done}/{self.n_total}] {r['file']}: {r['status']}"
            if self.progress is not None:
                self.progress.update(1)
        if r["status"] == "ok":
            msg += f" ({r['seconds']:.2f} s)"
        if r["error"]:
            msg += f" - {r['error']}"
        self.log(msg)

    def _fail(self, job_or_item, e: BaseException, seconds: float = 0.0) -> None:
        item = job_or_item.item if isinstance(job_or_item, _Job) else job_or_item
        self._add(summ.row(str(item.rel), "failed", height=getattr(job_or_item, "height", None),
                           width=getattr(job_or_item, "width", None),
                           seconds=seconds + getattr(job_or_item, "seconds", 0.0), error=_error_text(e)))

    # -- reader threads --------------------------------------------------------------------
    def read(self, item_and_clash: tuple[InputFile, str | None]) -> _Job | None:
        """Decode one file (a reader thread); None when it is skipped or failed (row written)."""
        item, clash = item_and_clash
        t0 = time.perf_counter()
        try:
            if clash is not None:
                raise InputError(f"its results would overwrite those of {clash} (same name "
                                 f"without extension in the same folder); rename one of them")
            paths = {k: item.output(self.out_dir, k) for k in self.kinds}
            for p in paths.values():
                check_output_path(p, self.out_dir)
            todo = [k for k in self.kinds if self.cfg.overwrite or not paths[k].exists()]
            if not self.cfg.check and not todo:
                self._add(summ.row(str(item.rel), "skipped", output=item.output_rel("labels"),
                                   error="results exist (overwrite=true to redo)"))
                return None
            source = open_image(item.path, level=self.cfg.level, max_image_pixels=self.cfg.max_image_pixels,
                                whole_up_to_pixels=self.cfg.large_image_pixels)
            if not self.cfg.check and is_large(source.height, source.width, self.cfg.large_image_pixels):
                return self._open_large(item, source, t0)
            with source:
                image = source.read_all()
            raw = self.pred.prepare(image)
            return _Job(item, todo, image if "overlay" in todo else None, raw, image.shape[0],
                        image.shape[1], time.perf_counter() - t0)
        except Exception as e:
            self._fail(item, e, time.perf_counter() - t0)
            return None

    def _open_large(self, item: InputFile, source, t0: float) -> _Job | None:
        """A large image: its own result names (<stem>.tif ...), pixels left in the file."""
        paths = {k: large_output_path(item.output(self.out_dir, k), k) for k in self.kinds}
        remove_leftover_work(paths["labels"])
        todo = [k for k in self.kinds if self.cfg.overwrite or not paths[k].exists()]
        if not todo:
            source.close()
            self._add(summ.row(str(item.rel), "skipped", output=_large_rel(item),
                               error="results exist (overwrite=true to redo)"))
            return None
        return _Job(item, todo, None, None, source.height, source.width, time.perf_counter() - t0,
                    source=source, paths=paths)

    # -- main thread: the device -------------------------------------------------------------
    def process(self, job: _Job) -> None:
        if job.source is not None:
            return self._label_large(job)
        if self.cfg.check:
            return self._check_against_patchwise(job)
        t0 = time.perf_counter()
        try:
            limit = self.pred.batch_limit(job.height, job.width)
        except Exception as e:
            return self._fail(job, e, time.perf_counter() - t0)
        job.seconds += time.perf_counter() - t0
        if limit <= 1:
            return self._predict_alone(job)
        key = (job.raw.shape, job.raw.dtype.str)
        group = self.pending.setdefault(key, [])
        group.append(job)
        if len(group) >= limit:
            self._flush(key)
        elif sum(map(len, self.pending.values())) > 4 * self.cfg.batch_size:
            self._flush(max(self.pending, key=lambda k: len(self.pending[k])))

    def _predict_alone(self, job: _Job) -> None:
        """One image in its own pass(es): whole, or tile by tile; scores straight into their file."""
        t0 = time.perf_counter()
        scores_file = None
        try:
            if "scores" in job.todo:
                s = self.pred.output_stride
                scores_file = ScoresFile(job.item.output(self.out_dir, "scores"),
                                         (self.pred.score_channels, -(-job.height // s), -(-job.width // s)))
            p = self.pred.predict(job.raw, scores_out=None if scores_file is None else scores_file.array)
            job.raw = None
        except Exception as e:
            if scores_file is not None:
                scores_file.abort(e)
            return self._fail(job, e, time.perf_counter() - t0)
        job.seconds += time.perf_counter() - t0
        self.writer.submit(lambda: self._write(job, p, scores_file))

    def _label_large(self, job: _Job) -> None:
        """Tile by tile into a resumable store, then BigTIFF results (fcnseg.infer.stream)."""
        tqdm = require("tqdm", "the progress bars of tools/infer.py").tqdm

        t0, cfg, pred = time.perf_counter(), self.cfg, self.pred
        ckpt = cfg.checkpoint
        identity = {"checkpoint": file_identity(ckpt) if os.path.isfile(ckpt) else str(ckpt),
                    "head": cfg.head, "device": pred.device.type, "precision": str(pred.precision)}
        bar = None

        def on_tile(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, initial=done - 1, unit="tile", desc=job.item.rel.name, leave=False,
                           disable=not cfg.progress, dynamic_ncols=True)
            bar.update(1)

        try:
            label_large_image(pred, job.source, job.paths, job.todo, tile_size=pred.tile(), precision=pred.precision,
                              channels_last=pred.channels_last, overlay_alpha=cfg.overlay_alpha,
                              identity=identity, log=self.log, on_tile=on_tile)
        except Exception as e:
            return self._fail(job, e, time.perf_counter() - t0)
        finally:
            job.source.close()
            if bar is not None:
                bar.close()
        self._add(summ.row(str(job.item.rel), "ok", output=_large_rel(job.item), height=job.height,
                           width=job.width, seconds=job.seconds + time.perf_counter() - t0))

    def _flush(self, key) -> None:
        group = self.pending.pop(key, [])
        if not group:
            return
        t0 = time.perf_counter()
        try:
            finish = self.pred.start_batch([j.raw for j in group], scores=any("scores" in j.todo for j in group))
        except Exception as e:
            share = (time.perf_counter() - t0) / len(group)
            for job in group:
                self._fail(job, e, share)
            return
        share = (time.perf_counter() - t0) / len(group)
        for job in group:
            job.seconds += share
            job.raw = None
        self.writer.submit(lambda: self._write_group(group, finish))

    def flush_all(self) -> None:
        for key in list(self.pending):
            self._flush(key)

    # -- writer thread -----------------------------------------------------------------------
    def _write_group(self, group: list[_Job], finish) -> None:
        t0 = time.perf_counter()
        try:
            preds = finish()  # on CUDA: waits for this pass's results to reach the host
        except Exception as e:
            share = (time.perf_counter() - t0) / len(group)
            for job in group:
                self._fail(job, e, share)
            return
        for job, p in zip(group, preds):
            self._write(job, p, None)

    def _write(self, job: _Job, p, scores_file: ScoresFile | None) -> None:
        """Write what is still to write; the label map last (its presence marks the image done)."""
        t0 = time.perf_counter()
        it, out = job.item, self.out_dir
        try:
            if scores_file is not None:
                scores_file.close()
            elif "scores" in job.todo and p.scores is not None:
                save_scores(it.output(out, "scores"), np.concatenate(list(p.scores.values())))
            if "overlay" in job.todo:
                save_overlay(it.output(out, "overlay"), job.image, p.labels, self.pred.palette,
                             self.cfg.overlay_alpha)
            if "labels" in job.todo:
                save_labels(it.output(out, "labels"), p.labels, self.pred.palette)
        except Exception as e:
            if scores_file is not None:
                scores_file.abort(e)
            return self._fail(job, e, time.perf_counter() - t0)
        finally:
            job.image = job.raw = None
        self._add(summ.row(str(it.rel), "ok", output=it.output_rel("labels"), height=job.height,
                           width=job.width, seconds=job.seconds + time.perf_counter() - t0))

    # -- check=true -------------------------------------------------------------------------
    def _check_against_patchwise(self, job: _Job) -> None:
        """Patch-by-patch reference on a small region vs the dense result there."""
        from fcnseg.compare import compare_dense
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
            d = predict_tiled(pred.dense, job.raw, pred.tile(), transform=pred.transform,
                              region=region, channels_last=pred.channels_last)
            s = pred.output_stride
            rows = (d.row0 + torch.arange(d.labels.shape[0])) * s
            cols = (d.col0 + torch.arange(d.labels.shape[1])) * s
            pix = torch.cartesian_prod(rows, cols)  # (M, 2) pixels (i, j) on the output grid
            x = pred.transform(job.raw)[None]  # (1, C, H, W)
            p = next(pred.model.parameters())
            dense = d.scores.reshape(1, d.scores.shape[0], -1)  # (1, K, M), pixels in `pix` order
            # the reference follows the checkpoint's patch rule, whatever the dense network says
            with runtime.precision_context("fp32", p.device):   # the check is in IEEE fp32, always
                result = compare_dense(pred.dense, pred.model, x.to(p.device, p.dtype), pix,
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


# -- the files of this rank -----------------------------------------------------------------

def plan_files(cfg: InferenceSettings, out_dir: Path, rank: int, world: int):
    """(input root, this rank's files, name collisions, files of all ranks). Only rank 0 walks
    the input, reads headers and cleans stale temporaries; the others receive their share."""
    plan: object = None
    if rank == 0:
        try:
            root, items = find_inputs(cfg.input, out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            for folder in sorted({it.output(out_dir, "labels").parent for it in items}):
                remove_stale_temps_in(folder)  # one scan per output folder, before anyone writes
            clash = find_collisions(items)
            if world > 1:  # finished images weigh nothing; the rest by pixels, from headers
                pixels = [0 if _is_done(cfg, it, out_dir) else image_pixels(it.path) for it in items]
                shares = [[items[i] for i in s] for s in balance_by_pixels(pixels, world)]
            else:
                shares = [items]
            plan = (root, shares, clash, len(items))
        except Exception as e:
            plan = e
    if world > 1:
        plan = runtime.broadcast_from_rank0(plan, rank, cfg.dist_timeout_s)
    elif isinstance(plan, BaseException):
        raise plan
    root, shares, clash, n_all = plan
    out_dir.mkdir(parents=True, exist_ok=True)
    return root, shares[rank], clash, n_all


def _console(bar) -> Callable[[str], None]:
    if bar is None or bar.disable:
        return print
    return lambda msg: bar.write(msg, file=sys.stdout)


def run_inference(cfg: InferenceSettings, *, predictor: Predictor | None = None,
                  log: Callable[[str], None] | None = None) -> RunResult:
    """Run over every input file; returns the rows (all ranks' on rank 0) and summary paths."""
    tqdm = require("tqdm", "the progress bars of tools/infer.py").tqdm

    out_dir = Path(os.path.abspath(cfg.output))
    rank, world, _ = runtime.dist_env()
    root, mine, clash, n_all = plan_files(cfg, out_dir, rank, world)
    pred = predictor or load_predictor(cfg.checkpoint, device=cfg.device, output_stride=cfg.output_stride,
                                       channels_last=cfg.use_channels_last, head=cfg.head,
                                       tile_size=cfg.tile_size, memory_mb=cfg.memory_mb,
                                       batch_size=cfg.batch_size, precision=cfg.precision)
    tile = pred.tile()
    tag = f"rank {rank}/{world}: " if world > 1 else ""
    bar = tqdm(total=len(mine), unit="image", desc=f"rank {rank}" if world > 1 else "images",
               position=rank if world > 1 else None, disable=not cfg.progress, dynamic_ncols=True)
    say = log or _console(bar)
    say(f"{tag}{len(mine)} of {n_all} images under {root} -> {out_dir} (device {pred.device}, "
        f"tile_size {tile if tile else 'whole image'}, output_stride {pred.output_stride})")
    journal = summ.Journal(out_dir, rank)
    t0 = time.perf_counter()
    try:
        with runtime.reuse_host_memory(pred.device), Writer(depth=4) as writer:
            run = _Run(cfg, pred, out_dir, journal, writer, lambda m: say(tag + m), bar)
            run.n_total = len(mine)
            reads = read_ahead([(it, clash.get(str(it.rel))) for it in mine], run.read,
                               cfg.workers, cfg.read_ahead)
            for job in reads:
                if job is not None:
                    run.process(job)
            run.flush_all()
    finally:
        journal.close()
        bar.close()
    say(f"{tag}finished its {len(mine)} images in {time.perf_counter() - t0:.1f} s")
    if world > 1:
        own = summ.read_journal(journal.path)  # before rank 0 merges and removes it
        runtime.barrier(cfg.dist_timeout_s)
        if rank != 0:
            return RunResult(own, [], tile)
    rows = summ.merge_journals(out_dir, world)
    files = summ.write_summary(out_dir, rows, tuple(cfg.summary))
    c = summ.counts(rows)
    say(f"{tag}done: {c['ok']} ok, {c['skipped']} skipped, {c['failed']} failed; summary in "
        f"{', '.join(str(f) for f in files)}")
    return RunResult(rows, files, tile)
