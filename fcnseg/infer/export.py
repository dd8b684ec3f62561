"""Export the dense network (padding included) to ONNX or TorchScript.

The exported graph maps a normalised image (N, C, H, W) to scores
(N, K, ceil(H/s), ceil(W/s)) and needs nothing from fcnseg: dilated average pooling is
already a depthwise convolution in the dense network, so opset 17 suffices (ONNX
AveragePool has dilations only from opset 19). The preprocessing the network expects
(channels, mean, std) and the class names/palette go into a JSON file next to the
model and, for ONNX, into the model's metadata.
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fcnseg.extras import require
from fcnseg.runtime import atomic_path, write_text_atomic
from fcnseg.settings import SettingsError, check_choice, check_positive

from .model import Predictor

FORMATS = ("onnx", "torchscript")


@dataclass
class ExportSettings:
    """tools/export.py's settings (conf/export.yaml repeats the defaults). The exported graph is
    IEEE float32: precision does not apply to an export, and its check runs in fp32."""
    checkpoint: Any = None         # required
    output: Any = None             # required: the model file; <output>.json gets the metadata
    format: str = "onnx"           # onnx | torchscript
    height: Any = None             # None (with width None): any input size; both set: a fixed size
    width: Any = None
    output_stride: int = 1
    head: Any = None               # a classifier with several outputs: the one to export; None: the first
    opset: int = 17
    verify: bool = True            # run the exported file on a random image: max |exported - PyTorch|

    def __post_init__(self):
        for key in ("checkpoint", "output"):
            if not getattr(self, key):
                raise SettingsError(key, f"is required, e.g. {key}=" + ("best.pt" if key == "checkpoint"
                                                                       else "model.onnx"))
        check_choice("format", self.format, FORMATS)
        check_positive("output_stride", self.output_stride)
        check_positive("opset", self.opset)
        if (self.height is None) != (self.width is None):
            raise SettingsError("height", "give both height and width for a fixed size, or neither for dynamic")
        if self.head == "all":
            raise SettingsError("head", "all is for tools/infer.py save_scores=true; export one head (a name or "
                                "index)")


class _Whole(nn.Module):
    """The exported function: the dense network on an unpadded image."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def export_metadata(pred: Predictor) -> dict:
    return {"in_channels": pred.in_channels, "num_classes": pred.num_classes,
            "mean": pred.mean, "std": pred.std, "input_scale": "x / 255 (uint8) or x / 65535 (uint16)",
            "class_names": pred.class_names, "palette": pred.palette,
            "patch_size": list(pred.patch_size) if pred.patch_size else None,
            "output_stride": pred.output_stride, "pad_mode": pred.pad_mode,
            "pad_value": pred.pad_value, "input": "x (N, C, H, W) float32, normalised",
            "output": "scores (N, K, ceil(H/s), ceil(W/s)); label = argmax over K"}


def example_size(pred: Predictor) -> int:
    """A trace size that is not a multiple of common strides, so no size is baked in by luck."""
    p = max(pred.patch_size) if pred.patch_size else 64
    return max(37, p + 5) if pred.patch_size else 64


def export_model(pred: Predictor, path: str | Path, fmt: str, *, height: int | None = None,
                 width: int | None = None, opset: int = 17) -> list[Path]:
    """Write the model (and ``<path>.json`` metadata); H/W None: dynamic (ONNX) / any size
    (TorchScript); given: a fixed input size. Returns the written paths."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if (height is None) != (width is None):
        raise ValueError("give both height and width for a fixed size, or neither for dynamic")
    if fmt == "onnx":
        require("onnx", "format=onnx")          # before the export: the exporter's own error is a bare import
    net = (pred.dense if pred.dense is not None else pred.model).float().cpu().eval()
    net = net.to(memory_format=torch.contiguous_format)
    module = _Whole(net).eval()
    n = example_size(pred)
    h, w = (height, width) if height is not None else (n, n + 3)
    x = torch.randn(1, pred.in_channels, h, w)
    path = Path(path)
    meta = export_metadata(pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer chatter
        if fmt == "onnx":
            buf = io.BytesIO()
            dyn = None if height is not None else {"image": {0: "batch", 2: "height", 3: "width"},
                                                  "scores": {0: "batch", 2: "out_height", 3: "out_width"}}
            # the TorchScript-based exporter: the torch.export-based one needs onnxscript
            torch.onnx.export(module, (x,), buf, dynamo=False, input_names=["image"],
                              output_names=["scores"], dynamic_axes=dyn, opset_version=opset)
            import onnx
            model = onnx.load_from_string(buf.getvalue())
            for k, v in meta.items():
                entry = model.metadata_props.add()
                entry.key, entry.value = k, json.dumps(v)
            with atomic_path(path) as tmp:
                onnx.save(model, str(tmp))
        else:
            with torch.inference_mode(False), torch.no_grad():
                traced = torch.jit.trace(module, (x,), check_trace=False)
            with atomic_path(path) as tmp:
                torch.jit.save(traced, str(tmp), _extra_files={"fcnseg.json": json.dumps(meta)})
    side = path.with_name(path.name + ".json")
    write_text_atomic(side, json.dumps(meta, indent=1))
    return [path, side]
