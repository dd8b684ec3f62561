"""Confusion-matrix segmentation metrics: pixel accuracy, per-class IoU, mean IoU.

One (K, K) int64 matrix is the whole state, so distributed evaluation is a single
all_reduce of it and the result equals a single-process evaluation exactly.
"""
import math

import torch


class ConfusionMatrix:
    def __init__(self, num_classes, ignore_index=255, device="cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # rows: ground truth, columns: prediction
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, target, pred):
        """target, pred: integer tensors of the same shape; ignore_index pixels are skipped."""
        k = self.num_classes
        keep = target != self.ignore_index
        t, p = target[keep].long(), pred[keep].long()
        if t.numel() and (t.min() < 0 or t.max() >= k):
            raise ValueError(f"target labels must lie in [0, {k}) or equal ignore_index "
                             f"{self.ignore_index}; got range [{int(t.min())}, {int(t.max())}]")
        self.mat += torch.bincount(t * k + p, minlength=k * k).reshape(k, k).to(self.mat.device)

    def all_reduce(self):
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat)
        return self

    def compute(self):
        """Returns pixel_acc, per-class IoU (NaN for a class absent from both target and
        prediction, so it does not pull the mean down), and mIoU over the other classes."""
        m = self.mat.double().cpu()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        total = m.sum()
        acc = float(tp.sum() / total) if total > 0 else math.nan
        valid = ~torch.isnan(iou)
        miou = float(iou[valid].mean()) if valid.any() else math.nan
        return {"pixel_acc": acc, "miou": miou, "per_class_iou": iou.tolist()}
