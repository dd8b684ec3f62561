"""Large images, labelled tile by tile: read by region, computed one tile at a time into a
resumable working store, then written as tiled BigTIFF files (fcnseg.infer.bigtiff). Neither
the image (when its format has regions) nor its label map is ever whole in memory.

The working store sits beside the result, hidden: ``.<stem>.tif.fcnseg-work/``, a zarr group
with ``labels`` (the output grid, ceil(H/s) x ceil(W/s)) and, with scores, ``scores`` (float16,
K x grid, a chunk per class), chunked exactly as the tile plan: a tile is a chunk (the last of a row or
column is short, as the grid's last chunk is). zarr writes each chunk to a temporary file and renames
it, and a tile's scores are written before its labels, so a tile is finished exactly when its
label chunk exists: a run killed with SIGKILL loses only the tile in flight, and the same
command continues from the finished tiles. The store records what decides its numbers (image
file, level, checkpoint, head, device, precision, tile plan); a rerun whose settings differ
starts over. When every tile is done the results are written from the store (scores, overlay,
then the label map, each atomically: a partial result is never mistaken for a finished one)
and the store is deleted. Tiles are computed deterministically, so a resumed run writes the
same bytes as an uninterrupted one.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from fcnseg import runtime
from fcnseg.extras import require
from fcnseg.runtime import atomic_path

from .bigtiff import write_label_pyramid, write_scores
from .outputs import blend_overlay, nearest_grid_index
from .tiling import TilePlan, dense_padding, iter_tile_outputs, plan_tiles

#: Images of more pixels than this (8192 x 8192) are large: read by region where the format allows,
#: labelled tile by tile and written as tiled BigTIFF; the rest keep the PNG results.
LARGE_IMAGE_PIXELS = 2 ** 26
WORK_SUFFIX = ".fcnseg-work"
#: Longest side of the overlay of a large image (it is downsampled, every n-th pixel, to fit).
OVERLAY_MAX_SIDE = 4096
_OVERLAY_BLOCK = 2048  # image pixels a side read at once while downsampling the overlay


def is_large(height: int, width: int, large_image_pixels: int) -> bool:
    return height * width > large_image_pixels


def large_output_path(path: Path, kind: str) -> Path:
    """A large image's result in place of a small one's: <stem>.png -> <stem>.tif (labels),
    <stem>.scores.npy -> <stem>.scores.tif; the overlay keeps its name (<stem>.overlay.png)."""
    return path if kind == "overlay" else path.with_suffix(".tif")


def work_dir(labels_path: Path) -> Path:
    return labels_path.with_name(f".{labels_path.name}{WORK_SUFFIX}")


def remove_leftover_work(labels_path: Path) -> None:
    """Delete the working store of a finished image (left when a run is killed while deleting it)."""
    work = work_dir(labels_path)
    if work.is_dir() and labels_path.exists():
        shutil.rmtree(work, ignore_errors=True)


def file_identity(path: str | os.PathLike) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _label_dtype(channels: int):
    return np.uint8 if channels <= 256 else np.uint16 if channels <= 65536 else np.uint32


class TileStore:
    """The tiles finished so far (see the module docstring)."""

    def __init__(self, root: Path, plan: TilePlan, num_classes: int, score_channels: int, identity: dict,
                 log: Callable[[str], None]):
        """num_classes: decides the label type; score_channels: K of the scores kept (0: none)."""
        zarr = require("zarr", "labelling large images (their tiles go to a zarr working store)")
        self.root, self.plan, self.with_scores = root, plan, score_channels > 0
        self.labels = self.scores = None
        if root.exists():
            try:
                group = zarr.open_group(root, mode="r+")
                if dict(group.attrs).get("identity") == identity:
                    self.labels = group["labels"]
                    self.scores = group["scores"] if self.with_scores else None
                else:
                    log(f"{root.name}: made with other settings or another file; starting over")
            except Exception as e:  # killed while being created: nothing in it can be trusted
                log(f"{root.name}: unreadable ({type(e).__name__}); starting over")
        if self.labels is None:
            shutil.rmtree(root, ignore_errors=True)
            self._create(zarr, num_classes, score_channels, identity)
        for leftover in root.rglob("*.partial"):  # a chunk being written when the run was killed
            leftover.unlink(missing_ok=True)

    def _create(self, zarr, num_classes: int, score_channels: int, identity: dict) -> None:
        p = self.plan
        group = zarr.open_group(self.root, mode="w")
        every_chunk = {"write_empty_chunks": True}  # a chunk file per finished tile, even all zeros
        self.labels = group.create_array("labels", shape=(p.rows, p.cols), chunks=(p.tile_rows, p.tile_cols),
                                         dtype=_label_dtype(num_classes), fill_value=0, config=every_chunk)
        if self.with_scores:
            # one chunk per class and tile: writing the scores file reads one class's band at a time
            self.scores = group.create_array("scores", shape=(score_channels, p.rows, p.cols),
                                             chunks=(1, p.tile_rows, p.tile_cols),
                                             dtype=np.float16, fill_value=0, config=every_chunk)
        group.attrs["identity"] = identity  # last: a store without it is an unfinished creation

    def _chunk(self, m0: int, n0: int) -> tuple[int, int]:
        # tiles start at multiples of the tile size: tile (i, j) is chunk (i, j)
        return (m0 - self.plan.row0) // self.plan.tile_rows, (n0 - self.plan.col0) // self.plan.tile_cols

    def done(self, m0: int, n0: int) -> bool:
        i, j = self._chunk(m0, n0)
        return (self.root / "labels" / "c" / str(i) / str(j)).is_file()

    def write(self, m0: int, n0: int, labels: np.ndarray, scores: np.ndarray | None) -> None:
        """Store tile (m0, n0), its chunk: scores first, labels last."""
        r0, c0 = m0 - self.plan.row0, n0 - self.plan.col0
        rows, cols = slice(r0, r0 + labels.shape[0]), slice(c0, c0 + labels.shape[1])
        if self.scores is not None:
            self.scores[:, rows, cols] = scores
        self.labels[rows, cols] = labels

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _labels_at_pixels(grid, stride: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Full-resolution labels at pixel rows x cols: each pixel takes its nearest grid cell, as
    outputs.to_image_size does for small images; only the grid cells needed are read."""
    def read(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        g_rows, inv_r = np.unique(nearest_grid_index(rows, stride, grid.shape[0]), return_inverse=True)
        g_cols, inv_c = np.unique(nearest_grid_index(cols, stride, grid.shape[1]), return_inverse=True)
        return np.asarray(grid.get_orthogonal_selection((g_rows, g_cols)))[inv_r][:, inv_c]
    return read


def _write_overlay(path: Path, source, labels_at: Callable, palette, alpha: float) -> None:
    """The overlay downsampled to OVERLAY_MAX_SIDE (every step-th pixel), read block by block."""
    H, W = source.height, source.width
    step = max(1, math.ceil(max(H, W) / OVERLAY_MAX_SIDE))
    out = np.zeros((-(-H // step), -(-W // step), 3), np.uint8)
    block = max(1, _OVERLAY_BLOCK // step)  # overlay pixels a side per block
    for a0 in range(0, out.shape[0], block):
        rows = np.arange(a0, min(a0 + block, out.shape[0])) * step
        for b0 in range(0, out.shape[1], block):
            cols = np.arange(b0, min(b0 + block, out.shape[1])) * step
            pixels = source.read(int(rows[0]), int(cols[0]), int(rows[-1] - rows[0]) + 1,
                                 int(cols[-1] - cols[0]) + 1)[::step, ::step]
            out[a0:a0 + len(rows), b0:b0 + len(cols)] = blend_overlay(pixels, labels_at(rows, cols), palette, alpha)
    with atomic_path(path) as tmp:
        Image.fromarray(out).save(tmp, format="PNG")


def label_large_image(pred, source, paths: dict[str, Path], todo: Sequence[str], *, tile_size: int | None,
                      precision: str = "fp32", channels_last: bool = False, overlay_alpha: float = 0.5,
                      identity: dict | None = None, log: Callable[[str], None] = print,
                      on_tile: Callable[[int, int], None] | None = None) -> None:
    """Label a large image tile by tile and write the results of ``todo`` (labels, scores, overlay).

    pred: a Predictor (fcnseg.infer.model) with a patch classifier's dense network. source: an
    ImageSource (fcnseg.data.regions). paths: kind -> result path (large_output_path names).
    tile_size: the largest tile side in image pixels, rounded down to a multiple of the output stride;
    one window per forward pass (None/<=0: one tile).
    identity: what else decides the numbers (checkpoint, head, device, precision), kept in the store
    so a rerun with other settings starts over. on_tile(done, total) after each tile.
    """
    if pred.dense is None:
        raise ValueError(f"{source.path}: a large image is labelled tile by tile, which needs a patch "
                         "classifier; this checkpoint holds an already dense network (it pads inside, "
                         "so tiles would not reproduce the whole-image result)")
    mode, value = dense_padding(pred.dense)
    s = pred.output_stride
    plan = plan_tiles(source.height, source.width, pred.dense.patch_size, s, tile_size)
    K, with_scores = pred.score_channels, "scores" in todo
    identity = {**(identity or {}), "image": file_identity(source.path), "level": getattr(source, "level", 0),
                "plan": [plan.rows, plan.cols, plan.tile_rows, plan.tile_cols, s], "channels": K,
                "scores": with_scores}
    store = TileStore(work_dir(paths["labels"]), plan, pred.num_classes, K if with_scores else 0, identity, log)
    origins = plan.origins
    remaining = [o for o in origins if not store.done(*o)]
    log(f"{source.path.name}: {source.height}x{source.width}, {len(origins)} tile{'s' * (len(origins) != 1)} of up to "
        f"{plan.tile_rows * s}x{plan.tile_cols * s} pixels"
        + (f", {len(origins) - len(remaining)} done before" if len(remaining) < len(origins) else ""))

    def transform(raw):
        return pred.transform(pred.prepare(raw))

    done = len(origins) - len(remaining)
    with runtime.reuse_host_memory(pred.device):  # every tile's maps reuse the pages of the tile before
        for m0, n0, out in iter_tile_outputs(pred.dense, source, plan, pad_mode=mode, pad_value=value,
                                             transform=transform, batch_size=1, precision=precision,
                                             channels_last=channels_last, origins=remaining):
            # argmax on the device, in the network's precision, before any down-cast
            labels = out[:pred.label_channels].argmax(0).cpu().numpy().astype(_label_dtype(pred.num_classes))
            scores = out.float().cpu().numpy().astype(np.float16) if with_scores else None
            store.write(m0, n0, labels, scores)
            done += 1
            if on_tile is not None:
                on_tile(done, len(origins))

    labels_at = _labels_at_pixels(store.labels, s)
    if with_scores:
        with atomic_path(paths["scores"]) as tmp:
            write_scores(tmp, lambda k, top, bottom: np.asarray(store.scores[k, top:bottom, :]), K,
                         plan.rows, plan.cols)
    if "overlay" in todo:
        _write_overlay(paths["overlay"], source, labels_at, pred.palette, overlay_alpha)
    if "labels" in todo:  # last: its presence marks the image done
        with atomic_path(paths["labels"]) as tmp:
            write_label_pyramid(tmp, labels_at, source.height, source.width, pred.num_classes, pred.palette)
    store.remove()
