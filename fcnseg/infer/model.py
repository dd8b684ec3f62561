"""A trained checkpoint made ready for inference, and the one-image API.

    predictor = fcnseg.infer.load_predictor("best.pt")
    p = predictor.predict(image)                 # image: (H, W[, C]) uint8/uint16 array or a path
    p.labels                                     # (H, W) class index of every pixel
    predictor.predict(image, scores=True).scores # {head: (K, ceil(H/s), ceil(W/s)) float32}

The Predictor holds the classifier, its dense network and the exact preprocessing of
training, and chooses by itself how an image runs: whole (an already dense network, or an
image that fits one tile), or tile by tile with the exact halo. It is a picklable callable:
it pickles as its checkpoint's weights and load options and is rebuilt on unpickling (on
the unpickling process's device for device="auto"), so a cluster framework can ship it to
workers and map it over images.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg import runtime
from fcnseg.checkpoint import INFO_KEYS, load_checkpoint, model_from_checkpoint
from fcnseg.data.io import normalize, read_image, to_channels, to_float
from fcnseg.data.palette import resolve_palette

from . import tiling
from .outputs import to_image_size
from .tiling import auto_tile_size, build_window, dense_padding, forward_windows, label_dtype, plan_tiles, predict_tiled


@dataclass
class Prediction:
    """One image's result. labels: (H, W), the class of every pixel (at output_stride s > 1
    each pixel takes the label of the nearest grid pixel (m*s, n*s)). scores, when asked
    for: head -> float32 (K, ceil(H/s), ceil(W/s)) array (float64 for a float64 predictor),
    entry [k, m, n] for pixel (m*s, n*s); a one-output classifier's head is 0."""
    labels: np.ndarray
    scores: dict | None
    stride: int


@dataclass
class Predictor:
    model: nn.Module                 # the classifier as trained
    dense: nn.Module | None          # its DenseClassifier; None for an already dense (smp) model
    device: torch.device
    in_channels: int
    num_classes: int
    mean: list[float]
    std: list[float]
    palette: list[list[int]]
    class_names: list[str] | None
    patch_size: tuple[int, int] | None
    pad_mode: str
    pad_value: float
    output_stride: int
    info: dict = field(default_factory=dict)
    # head="all": head -> (first, end) channel of the concatenated scores; labels from the first head
    head_channels: dict | None = None
    tile_size: int | None = None     # image pixels per tile side; None: the largest that fits memory_mb; 0: untiled
    memory_mb: float = 2048.0        # budget of one forward pass (one tile, or one stack of small images)
    batch_size: int = 8              # small images of one size stacked per pass, at most
    precision: str = "auto"         # the precision setting (fcnseg.runtime.precision); True: auto, False: fp32
    channels_last: bool = True
    source: dict | None = field(default=None, repr=False)  # checkpoint weights + load options (pickling)
    _tile: int | None = field(default=None, init=False, repr=False)
    _copy_stream: object = field(default=None, init=False, repr=False)

    @property
    def label_channels(self) -> int | None:
        """How many leading score channels the labels are the argmax of (None: all)."""
        return None if self.head_channels is None else next(iter(self.head_channels.values()))[1]

    @property
    def score_channels(self) -> int:
        return self.num_classes if self.head_channels is None else list(self.head_channels.values())[-1][1]

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Decoded image (H, W, C) or (H, W) -> the model's channel count, raw dtype kept (cheap
        to hold for huge images; windows are converted to float one at a time)."""
        return to_channels(image[:, :, None] if image.ndim == 2 else image, self.in_channels)

    def transform(self, raw: np.ndarray) -> torch.Tensor:
        """(h, w, C) raw window -> (C, h, w) float32, exactly the training normalisation."""
        return normalize(to_float(raw), self.mean, self.std)

    # -- how an image runs ---------------------------------------------------------------------
    def tile(self) -> int | None:
        """The tile side in use (image pixels); None: every image runs whole. The automatic
        size (tile_size None) is the largest tile of one window that fits memory_mb, probed once."""
        if self.dense is None or (self.tile_size is not None and self.tile_size <= 0):
            return None
        if self.tile_size is not None:
            return int(self.tile_size)
        if self._tile is None:
            self._tile = auto_tile_size(self.dense, self.in_channels, self.memory_mb, batch_size=1,
                                        precision=self.precision, channels_last=self.channels_last)
        return self._tile

    def batch_limit(self, height: int, width: int) -> int:
        """How many images of this size one pass stacks: up to batch_size while their windows
        hold no more pixels than one tile's window; 1 for an image that runs alone (an already
        dense network, or an image that needs several tiles: those run tile by tile, batch 1)."""
        if self.dense is None:
            return 1
        tile = self.tile()
        s = self.output_stride
        plan = plan_tiles(height, width, self.dense.patch_size, s, tile)
        if len(plan.origins) > 1:
            return 1
        if tile is None:
            return int(self.batch_size)
        h, w = plan.window_shape
        th, tw = plan_tiles(tile, tile, self.dense.patch_size, s, tile).window_shape
        return max(1, min(int(self.batch_size), (th * tw) // (h * w)))

    # -- predicting -----------------------------------------------------------------------------
    def predict(self, image, *, scores: bool = False, scores_out: np.ndarray | None = None) -> Prediction:
        """Labels (and scores) of one image: a decoded (H, W[, C]) array (any channel count:
        converted as in training) or a path. scores_out: a float array (K, ceil(H/s),
        ceil(W/s)), a memory map say, to write the scores into instead (scores is then None)."""
        raw = self.prepare(read_image(image) if isinstance(image, (str, os.PathLike)) else np.asarray(image))
        H, W = raw.shape[:2]
        want = scores or scores_out is not None
        tile = self.tile()
        if self.dense is None:
            p = predict_whole(self, raw, precision=self.precision, channels_last=self.channels_last)
            out = self._result(p.labels.numpy(), p.scores if want else None, H, W)
        elif len(plan_tiles(H, W, self.dense.patch_size, self.output_stride, tile).origins) == 1:
            out = self.start_batch([raw], scores=want)()[0]
        else:  # tile by tile, one window per pass: the tile is sized for batch 1
            p = predict_tiled(self.dense, raw, tile, transform=self.transform, batch_size=1, precision=self.precision,
                              channels_last=self.channels_last, return_scores=scores and scores_out is None,
                              scores_out=scores_out, label_channels=self.label_channels)
            return self._result(p.labels.numpy(), p.scores if scores_out is None else None, H, W)
        if scores_out is not None:
            scores_out[...] = np.concatenate(list(out.scores.values()))
            out.scores = None
        return out

    __call__ = predict

    def predict_batch(self, images: Sequence, *, scores: bool = False) -> list[Prediction]:
        """predict() of each image, in order; images of one size are stacked into passes as
        batch_limit allows (the same numbers as one at a time, up to summation order)."""
        raws = [self.prepare(read_image(im) if isinstance(im, (str, os.PathLike)) else np.asarray(im))
                for im in images]
        by_shape: dict[tuple, list[int]] = {}
        for i, r in enumerate(raws):
            by_shape.setdefault((r.shape, r.dtype.str), []).append(i)
        out: list[Prediction | None] = [None] * len(raws)
        for (shape, _), idx in by_shape.items():
            n = self.batch_limit(*shape[:2])
            if n <= 1:
                for i in idx:
                    out[i] = self.predict(raws[i], scores=scores)
                continue
            for k in range(0, len(idx), n):
                chunk = idx[k:k + n]
                for i, p in zip(chunk, self.start_batch([raws[i] for i in chunk], scores=scores)()):
                    out[i] = p
        return out

    def start_batch(self, raws: Sequence[np.ndarray], *, scores: bool = False) -> Callable[[], list[Prediction]]:
        """Start one pass over prepared images of one size that each fit one window; returns
        the function that waits for and returns their predictions. On CUDA the windows go up
        through pinned memory on a copy stream and the results come down without blocking, so
        the caller can prepare the next pass while the device computes this one."""
        H, W = raws[0].shape[:2]
        plan = plan_tiles(H, W, self.dense.patch_size, self.output_stride, None)
        mode, value = dense_padding(self.dense)
        rows, cols = plan.window_indices(plan.row0, plan.col0)
        batch = torch.stack([build_window(r, rows, cols, mode, value, self.transform) for r in raws])
        out = forward_windows(self.dense, self._upload(batch), precision=self.precision,
                              channels_last=self.channels_last)
        if tuple(out.shape[2:]) != (plan.rows, plan.cols):
            raise RuntimeError(f"the network gave {tuple(out.shape[2:])} outputs for a {H}x{W} image, "
                               f"expected {(plan.rows, plan.cols)} from its patch size and output stride")
        labels = out[:, :self.label_channels].argmax(1).to(label_dtype(out.shape[1]))
        sc = (out.float() if out.dtype in (torch.float16, torch.bfloat16) else out) if scores else None
        labels, sc, ready = self._download(labels, sc)

        def finish() -> list[Prediction]:
            if ready is not None:
                ready.synchronize()
            return [self._result(labels[i].numpy(), None if sc is None else sc[i], H, W)
                    for i in range(len(raws))]
        return finish

    def _result(self, grid: np.ndarray, scores, height: int, width: int) -> Prediction:
        full = to_image_size(grid, height, width, self.output_stride)
        if scores is None:
            return Prediction(full, None, self.output_stride)
        if isinstance(scores, torch.Tensor):  # reduced precision widened; float64 kept
            scores = scores if scores.dtype in (torch.float32, torch.float64) else scores.float()
        arr = np.asarray(scores)
        if self.head_channels is not None:
            return Prediction(full, {h: arr[a:b] for h, (a, b) in self.head_channels.items()}, self.output_stride)
        return Prediction(full, {self.info.get("head", 0): arr}, self.output_stride)

    def _upload(self, batch: torch.Tensor) -> torch.Tensor:
        """Host batch -> device. On CUDA: a pinned copy on a side stream that the compute stream
        waits for (the next batch's copy overlaps this batch's compute)."""
        if self.device.type != "cuda":
            return batch
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        pinned = batch.pin_memory()
        with torch.cuda.stream(self._copy_stream):
            x = pinned.to(self.device, non_blocking=True)
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self._copy_stream)
        x.record_stream(compute)  # the allocator must not hand x's memory out before compute is done
        return x

    def _download(self, labels: torch.Tensor, scores: torch.Tensor | None):
        """Device results -> host tensors; on CUDA copied into pinned memory without blocking,
        with the event to wait for before reading them."""
        if labels.device.type != "cuda":
            return labels.cpu(), None if scores is None else scores.cpu(), None
        host = [None if t is None else torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
                for t in (labels, scores)]
        ready = torch.cuda.Event()
        ready.record()
        return host[0], host[1], ready

    # -- pickling: the checkpoint's weights and the load options, rebuilt on unpickling -----------
    def __getstate__(self):
        if self.source is None:
            raise TypeError("this Predictor was not made by fcnseg.infer.load_predictor, so it cannot "
                            "be rebuilt from a checkpoint; make it with load_predictor to pickle it")
        return {"source": self.source, "tile": self.tile()}

    def __setstate__(self, state):
        src = state["source"]
        fresh = _build(src["checkpoint"], src["name"], **src["options"])
        self.__dict__.update(fresh.__dict__)
        self._tile = state["tile"] if self.tile_size is None else None


def _stride_of(model: nn.Module) -> int:
    enc = getattr(model, "encoder", None)
    return int(getattr(enc, "output_stride", 32)) if enc is not None else 32


def predict_whole(pred: Predictor, raw: np.ndarray, *, precision: str = "fp32",
                  channels_last: bool = False) -> tiling.GridPrediction:
    """An already dense network (smp) on the whole image: padded at the bottom/right
    (replicate) to a multiple of its encoder stride, then cropped. Not tiled: such a
    network pads inside, so tiles would not reproduce the whole-image result."""
    x = pred.transform(raw)[None]  # (1, C, H, W)
    H, W = x.shape[2:]
    m = _stride_of(pred.model)
    x = F.pad(x, (0, -W % m, 0, -H % m), mode="replicate")
    p = next(pred.model.parameters())
    x = x.to(p.device, p.dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), runtime.precision_context(precision, p.device):
        out = pred.model(x)[0, :, :H, :W]
    labels = out.argmax(0).to("cpu", label_dtype(out.shape[0]))
    return tiling.GridPrediction(labels, out.float().cpu(), 1)


def load_predictor(checkpoint: str | os.PathLike, *, device: str = "auto", output_stride: int = 1,
                   channels_last: bool = True, dtype: torch.dtype = torch.float32, head=None,
                   tile_size: int | None = None, memory_mb: float = 2048.0, batch_size: int = 8,
                   precision: str = "auto") -> Predictor:
    """Checkpoint -> Predictor on the chosen device, in eval mode.

    A patch classifier is densified with the checkpoint's patch size and padding rule
    at the requested output stride (1: every pixel). head: for a classifier with several
    outputs, the one to label with (a name or an index; None: the first), see fcnseg.heads;
    "all": label with the first, and the dense network gives every head's scores (concatenated).
    tile_size, memory_mb, batch_size, precision: how predict() runs (see Predictor).
    """
    ckpt = load_checkpoint(checkpoint)
    slim = {k: ckpt[k] for k in ("format", "version", "state_dict", *INFO_KEYS) if k in ckpt}
    return _build(slim, str(checkpoint), device=device, output_stride=output_stride,
                  channels_last=channels_last, dtype=dtype, head=head, tile_size=tile_size,
                  memory_mb=memory_mb, batch_size=batch_size, precision=precision)


def _build(ckpt: dict, name: str, *, device, output_stride, channels_last, dtype, head, tile_size,
           memory_mb, batch_size, precision) -> Predictor:
    from fcnseg.convert.options import Optimizations
    from fcnseg.dense import densify

    options = dict(device=device, output_stride=output_stride, channels_last=channels_last, dtype=dtype,
                   head=head, tile_size=tile_size, memory_mb=memory_mb, batch_size=batch_size, precision=precision)
    model, info = model_from_checkpoint(ckpt)
    dev = runtime.pick_device(device)  # under torchrun "auto"/"cuda" is this rank's GPU
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    model = model.to(dev, dtype).eval()
    missing = [k for k in ("in_channels", "num_classes", "mean", "std") if info.get(k) is None]
    if missing:
        raise ValueError(f"checkpoint {name} lacks {missing}: it cannot say how images were "
                         f"preprocessed in training; re-save it with tools/train.py")
    pad_mode = info.get("pad_mode") or "constant"
    pad_value = float(info.get("pad_value") or 0.0)
    patch = info.get("patch_size")
    dense, head_channels = None, None
    K = int(info["num_classes"])
    if patch is not None:
        from fcnseg.heads import AllHeads, OneHead, output_heads, resolve_head
        heads = output_heads(model, tuple(patch), in_channels=int(info["in_channels"]))
        key = resolve_head(list(heads), None if head == "all" else head)
        if key is not None and head == "all":    # every head's scores, labels from the first
            model = AllHeads(model, heads)
            head_channels, K = dict(model.channels), heads[key]
            info = {**info, "head": "all", "head_channels": head_channels}
        elif key is not None:                    # several outputs: label with one of them
            model, K = OneHead(model, key), heads[key]
            info = {**info, "head": key}
        # channels_last: 2-4x faster dilated convolutions and pooling on CPU (docs/inference.md);
        # the optimised dense network keeps every map NHWC, even after a 1-channel input
        dense = densify(model, tuple(patch), output_stride=output_stride,
                               pad_mode=pad_mode, pad_value=pad_value,
                               optimize=Optimizations(channels_last=bool(channels_last))).eval()
    elif head is not None:
        raise ValueError(f"head={head!r}: checkpoint {name} holds an already dense network with one output")
    elif output_stride != 1:
        raise ValueError(f"checkpoint {name} holds an already dense network (no patch size): "
                         f"output_stride={output_stride} applies only to patch classifiers")
    if channels_last and dense is None and dev.type in ("cpu", "cuda"):
        model.to(memory_format=torch.channels_last)
    return Predictor(model=model, dense=dense, device=dev, in_channels=int(info["in_channels"]),
                     num_classes=K, mean=list(info["mean"]), std=list(info["std"]),
                     palette=resolve_palette(info.get("palette"), K),
                     class_names=info.get("class_names"),
                     patch_size=tuple(patch) if patch is not None else None,
                     pad_mode=pad_mode, pad_value=pad_value, output_stride=int(output_stride),
                     info=info, head_channels=head_channels, tile_size=tile_size,
                     memory_mb=float(memory_mb), batch_size=int(batch_size), precision=precision,
                     channels_last=bool(channels_last),
                     source={"checkpoint": ckpt, "name": name, "options": options})
