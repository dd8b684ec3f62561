"""Losses on the scores of the sampled pixels.

Every loss takes logits (M, K) of the M sampled pixels of a batch (image-major) and
their labels (M,), whichever mode produced them, so its reduction is defined once:
cross-entropy is the (class-weighted) mean over the sampled pixels of the batch; Dice,
Focal and Lovasz (segmentation_models_pytorch) see the sampled pixels as one image.
"""
import torch
import torch.nn.functional as F

from fcnseg.extras import require

NAMES = ("ce", "dice", "focal", "lovasz")


def auto_class_weights(class_pixels):
    """(median frequency / class frequency) ** 0.5: background-heavy data stops drowning
    the rare classes, without the square-root-free version's overshoot. Absent classes 1."""
    f = torch.as_tensor(class_pixels, dtype=torch.float64)
    f = f / f.sum()
    present = f > 0
    w = torch.ones_like(f)
    w[present] = (f[present].median() / f[present]).sqrt()
    return w.tolist()


class PixelLoss(torch.nn.Module):
    def __init__(self, name="ce", num_classes=None, class_weights=None, label_smoothing=0.0,
                 **smp_kwargs):
        super().__init__()
        if name not in NAMES:
            raise ValueError(f"unknown loss {name!r}; choose one of {NAMES} (loss=<name>)")
        self.name = name
        self.label_smoothing = label_smoothing
        w = None
        if class_weights is not None:
            w = torch.as_tensor(class_weights, dtype=torch.float32)
            if num_classes is not None and len(w) != num_classes:
                raise ValueError(f"loss.class_weights has {len(w)} entries but the dataset has "
                                 f"{num_classes} classes; give one weight per class")
        self.register_buffer("weight", w, persistent=False)
        self.smp = None
        if name != "ce":
            L = require("segmentation_models_pytorch.losses", f"loss={name}")
            cls = {"dice": L.DiceLoss, "focal": L.FocalLoss, "lovasz": L.LovaszLoss}[name]
            self.smp = cls(mode="multiclass", **smp_kwargs)

    def forward(self, logits, target):  # (M, K), (M,)
        if self.smp is None:
            w = None if self.weight is None else self.weight.to(logits)
            return F.cross_entropy(logits, target, weight=w,
                                   label_smoothing=self.label_smoothing)
        # the sampled pixels as a (1, K, M, 1) image for the dense smp losses
        return self.smp(logits.t()[None, :, :, None], target[None, :, None])
