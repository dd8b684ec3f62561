"""A trained checkpoint made ready for inference: classifier, its dense network, and the
exact preprocessing it was trained with."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg import runtime
from fcnseg.data.palette import resolve_palette
from fcnseg.data.io import normalize, to_channels, to_float
from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint

from .tiling import Prediction, label_dtype


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

    @property
    def label_channels(self) -> int | None:
        """How many leading score channels the labels are the argmax of (None: all)."""
        return None if self.head_channels is None else next(iter(self.head_channels.values()))[1]

    @property
    def score_channels(self) -> int:
        return self.num_classes if self.head_channels is None else list(self.head_channels.values())[-1][1]

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Decoded image (H, W, C) -> the model's channel count, raw dtype kept (cheap to
        hold for huge images; windows are converted to float one at a time)."""
        return to_channels(image, self.in_channels)

    def transform(self, raw: np.ndarray) -> torch.Tensor:
        """(h, w, C) raw window -> (C, h, w) float32, exactly the training normalisation."""
        return normalize(to_float(raw), self.mean, self.std)


def _stride_of(model: nn.Module) -> int:
    enc = getattr(model, "encoder", None)
    return int(getattr(enc, "output_stride", 32)) if enc is not None else 32


def predict_whole(pred: Predictor, raw: np.ndarray, *, amp: bool = False,
                  channels_last: bool = False) -> Prediction:
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
    with torch.inference_mode(), runtime.autocast(p.device, runtime.amp_dtype(p.device, amp)):
        out = pred.model(x)[0, :, :H, :W]
    labels = out.argmax(0).to("cpu", label_dtype(out.shape[0]))
    return Prediction(labels, out.float().cpu(), 1)


def load_predictor(checkpoint: str | os.PathLike, *, device: str = "auto", output_stride: int = 1,
                   channels_last: bool = True, dtype: torch.dtype = torch.float32, head=None) -> Predictor:
    """Checkpoint -> Predictor on the chosen device, in eval mode.

    A patch classifier is densified with the checkpoint's patch size and padding rule
    at the requested output stride (1: every pixel). head: for a classifier with several
    outputs, the one to label with (a name or an index; None: the first), see fcnseg.heads;
    "all": label with the first, and the dense network gives every head's scores (concatenated).
    """
    import fcnseg

    ckpt = load_checkpoint(checkpoint)
    model, info = model_from_checkpoint(ckpt)
    dev = runtime.pick_device(device)  # under torchrun "auto"/"cuda" is this rank's GPU
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    model = model.to(dev, dtype).eval()
    missing = [k for k in ("in_channels", "num_classes", "mean", "std") if info.get(k) is None]
    if missing:
        raise ValueError(f"checkpoint {checkpoint} lacks {missing}: it cannot say how images were "
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
        dense = fcnseg.densify(model, tuple(patch), output_stride=output_stride,
                               pad_mode=pad_mode, pad_value=pad_value,
                               optimize=fcnseg.Optimizations(channels_last=bool(channels_last))).eval()
    elif head is not None:
        raise ValueError(f"head={head!r}: checkpoint {checkpoint} holds an already dense network with one output")
    elif output_stride != 1:
        raise ValueError(f"checkpoint {checkpoint} holds an already dense network (no patch size): "
                         f"output_stride={output_stride} applies only to patch classifiers")
    if channels_last and dense is None and dev.type in ("cpu", "cuda"):
        model.to(memory_format=torch.channels_last)
    return Predictor(model=model, dense=dense, device=dev, in_channels=int(info["in_channels"]),
                     num_classes=K, mean=list(info["mean"]), std=list(info["std"]),
                     palette=resolve_palette(info.get("palette"), K),
                     class_names=info.get("class_names"),
                     patch_size=tuple(patch) if patch is not None else None,
                     pad_mode=pad_mode, pad_value=pad_value, output_stride=int(output_stride),
                     info=info, head_channels=head_channels)
