"""Validation: a network's predictions over a labelled split, as one confusion matrix.

The same function scores a run's validations, its final report and tools/evaluate.py, so a
checkpoint evaluated later gives the numbers of the run that wrote it. Images with label
masks are scored pixel by pixel, labelled patches patch by patch (their label stands as a
one-pixel mask).
"""
from __future__ import annotations

import math

import torch

from fcnseg import runtime
from fcnseg.train.metrics import ConfusionMatrix


@torch.no_grad()
def evaluate(net, loader, num_classes, ignore_index=255, device="cpu", amp_dtype=None,
             channels_last=False, stop=None):
    """Confusion matrix of net's argmax over the loader, summed over all ranks; None
    when `stop` (a StopRequest) asked to stop before the last batch."""
    device = torch.device(device)
    cm = ConfusionMatrix(num_classes, ignore_index, device=device)
    for batch in loader:
        if stop is not None and stop.requested:
            return None
        x = batch["image"].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast(device, amp_dtype):
            pred = net(x).argmax(1)  # (N, H, W)
        cm.update(batch["mask"].to(device), pred)
    return cm.all_reduce()


def classification_metrics(cm: ConfusionMatrix) -> dict:
    """accuracy, per-class accuracy (recall; NaN for a class with no patch), their mean,
    the confusion matrix, and the IoU figures of the same matrix."""
    m = cm.mat.double().cpu()
    total = m.sum()
    rows = m.sum(1)
    per_class = torch.where(rows > 0, m.diag() / rows.clamp(min=1), torch.full_like(rows, math.nan))
    present = ~torch.isnan(per_class)
    iou = cm.compute()
    return {"accuracy": float(m.diag().sum() / total) if total > 0 else math.nan,
            "mean_class_accuracy": float(per_class[present].mean()) if present.any() else math.nan,
            "per_class_accuracy": per_class.tolist(),
            "confusion_matrix": cm.mat.cpu().tolist(),
            "miou": iou["miou"], "per_class_iou": iou["per_class_iou"], "patches": int(total)}
