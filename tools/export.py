"""Export a checkpoint's dense network to ONNX or TorchScript (runs without fcnseg).

    python tools/export.py checkpoint=best.pt format=onnx output=model.onnx
    python tools/export.py checkpoint=best.pt format=torchscript output=model.pt height=512 width=512

Configuration: conf/export.yaml (ExportSettings in fcnseg/infer/export.py). ONNX needs the
export extra: pip install 'fcnseg[export]'. The exported model takes a normalised image
(N, C, H, W) and returns scores (N, K, ceil(H/s), ceil(W/s)); <output>.json holds
mean, std, channels, class names and palette.
"""
import sys

import hydra
from hydra.utils import to_absolute_path


def verify(path, fmt, pred, height, width):
    """max |exported - PyTorch| on one random image of another size than the trace."""
    import numpy as np
    import torch

    from fcnseg.infer.export import example_size
    n = example_size(pred) + 6
    h, w = (height, width) if height is not None else (n + 1, n + 8)
    x = torch.randn(1, pred.in_channels, h, w)
    net = pred.dense if pred.dense is not None else pred.model
    with torch.inference_mode():
        ref = net(x.to(memory_format=torch.contiguous_format)).numpy()
    if fmt == "onnx":
        from fcnseg.extras import require
        ort = require("onnxruntime", "checking the exported file (verify=true)")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = sess.run(None, {"image": x.numpy()})[0]
    else:
        out = torch.jit.load(str(path))(x).detach().numpy()
    if out.shape != ref.shape:
        return float("inf")
    return float(np.abs(out - ref).max())


@hydra.main(config_path="../conf", config_name="export", version_base=None)
def main(cfg):
    from omegaconf import OmegaConf

    from fcnseg.infer import load_predictor
    from fcnseg.infer.export import ExportSettings, export_model
    from fcnseg.runtime.precision import precision_context
    from fcnseg.settings import build_section
    try:
        cfg = build_section("", ExportSettings, OmegaConf.to_container(cfg, resolve=True))
        pred = load_predictor(to_absolute_path(cfg.checkpoint), device="cpu",
                              output_stride=int(cfg.output_stride), channels_last=False, head=cfg.head)
        out = to_absolute_path(cfg.output)
        with precision_context("fp32", "cpu"):            # the exported graph is IEEE float32
            files = export_model(pred, out, cfg.format, height=cfg.height, width=cfg.width,
                                 opset=int(cfg.opset))
            print("wrote " + ", ".join(map(str, files)))
            diff = verify(out, cfg.format, pred, cfg.height, cfg.width) if cfg.verify else None
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if diff is not None:
        print(f"max |{cfg.format} - pytorch| = {diff:.3g}")
        if not diff <= 1e-4:
            print("error: the exported model disagrees with PyTorch", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
