"""Validation: a network's predictions over a labelled split, as one confusion matrix.

The same function scores a run's validations, its final report and tools/evaluate.py
(`evaluate_checkpoint`), so a checkpoint evaluated later gives the numbers of the run that
wrote it. Images with label masks are scored pixel by pixel, labelled patches patch by
patch (their label stands as a one-pixel mask).

Memory: a dense net at stride 1 over whole images needs memory in proportion to the image.
`plan_validation` sizes the passes with the inference tiler's memory model
(fcnseg.infer.tiling.auto_tile_size): images up to a side that fits a whole batch run in
batches as they are; larger ones run one at a time in tiles (fcnseg.infer.tiling.
predict_tiled, which gives the untiled labels).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from fcnseg import runtime
from fcnseg.train.errors import TrainingError
from fcnseg.train.metrics import ConfusionMatrix

logger = logging.getLogger(__name__)
MIB = 2 ** 20


@dataclasses.dataclass(frozen=True)
class ValidationPlan:
    """How a dense net at stride 1 scores images within a memory budget."""
    whole_side: int  # images whose sides are at most this run whole, a batch per pass
    tile_side: int   # larger images run one at a time in tiles of at most this side

    def describe(self, batch_size):
        tiles = f"in tiles of up to {self.tile_side} px"
        if self.whole_side == 0:
            return f"validation: each image alone, {tiles}"
        return (f"validation: images up to {self.whole_side} px a side whole in batches of "
                f"{batch_size}, larger ones {tiles}")


def plan_validation(net, in_channels, batch_size, budget_bytes, precision="fp32", channels_last=False):
    """The ValidationPlan of `net` (a dense net from fcnseg.densify) under `budget_bytes`, or
    None for a network the tiler cannot cut (an already dense network: whole images). A
    budget below one output cell is a TrainingError."""
    if not hasattr(net, "forward_valid"):
        return None
    from fcnseg.infer.tiling import auto_tile_size
    mb = budget_bytes / MIB
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the tiler's "below one output cell" warning
        try:
            tile = auto_tile_size(net, in_channels, mb, batch_size=1, precision=precision, channels_last=channels_last)
        except UserWarning as e:
            raise TrainingError(f"validation cannot fit: {e}; raise the memory limit "
                                f"(trainer.memory_limit_mb) or train a narrower network",
                                fixes=["trainer.memory_limit_mb=auto"]) from None
        try:
            whole = auto_tile_size(net, in_channels, mb, batch_size=batch_size, precision=precision,
                                   channels_last=channels_last)
        except UserWarning:  # not even one cell a batch: every image goes alone, in tiles
            whole = 0
    return ValidationPlan(whole, tile)


@torch.no_grad()
def evaluate(net, loader, num_classes, ignore_index=255, device="cpu", amp_dtype=None,
             channels_last=False, stop=None, plan: ValidationPlan | None = None, progress=False):
    """Confusion matrix of net's argmax over the loader, summed over all ranks; None
    when `stop` (a StopRequest) asked to stop before the last batch. plan: images larger
    than plan.whole_side are scored one at a time in tiles (the same labels); progress: a
    progress bar on stderr."""
    device = torch.device(device)
    cm = ConfusionMatrix(num_classes, ignore_index, device=device)
    for batch in tqdm(loader, desc="validation", leave=False, disable=not progress, dynamic_ncols=True):
        if stop is not None and stop.requested:
            return None
        masks = batch["mask"].to(device)
        if plan is not None and max(batch["image"].shape[-2:]) > plan.whole_side:
            for image, mask in zip(batch["image"], masks):
                cm.update(mask, predict_labels(net, image, plan, device, amp_dtype, channels_last).to(device))
            continue
        x = batch["image"].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast(device, amp_dtype):
            pred = net(x).argmax(1)  # (N, H, W)
        cm.update(masks, pred)
    return cm.all_reduce()


@torch.no_grad()
def predict_labels(net, image, plan: ValidationPlan | None, device, amp_dtype=None, channels_last=False):
    """The (H, W) labels of one normalised image (C, H, W) on the CPU, in tiles when the plan
    says it is too large for one pass."""
    if plan is not None and max(image.shape[-2:]) > plan.whole_side:
        from fcnseg.infer.tiling import predict_tiled
        with runtime.autocast(device, amp_dtype):  # the untiled pass's precision, whatever the rule
            return predict_tiled(net, image, plan.tile_side, channels_last=channels_last,
                                 return_scores=False).labels.long()
    x = image[None].to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with runtime.autocast(device, amp_dtype):
        return net(x).argmax(1)[0].cpu()


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


# --------------------------------------------------------------------- a checkpoint
def evaluate_checkpoint(settings, out_dir) -> dict:
    """Score the checkpoint of `settings` (an EvaluateSettings) on its data split and write
    out_dir/metrics.json. Data of kind "patches" gives accuracy, per-class accuracy and the
    confusion matrix of a patch classifier; images with label masks give mIoU, per-class IoU
    and pixel accuracy of the dense net at stride 1, as the training run's validation does."""
    from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
    from fcnseg.data import ScanCache, build_dataset, dataset_class, validate_dataset
    from fcnseg.dense import densify
    from fcnseg.train import report
    from fcnseg.train.cost import memory_limit_bytes
    from fcnseg.train.loaders import collate_images, collate_patches, worker_count

    data = settings.data
    device = runtime.pick_device(settings.device)
    checkpoint = load_checkpoint(settings.checkpoint, map_location="cpu")
    model, info = model_from_checkpoint(checkpoint)
    model.to(device)
    channels_last = True if settings.channels_last == "auto" else bool(settings.channels_last)
    precision = runtime.resolve_precision(settings.precision, device)
    amp_dtype = precision.autocast_dtype
    kw = {k: v for k, v in data.options.items() if v is not None}
    patches = getattr(dataset_class(data.kind), "task", None) == "patches"
    if patches:
        if info["patch_size"] is None:
            raise TrainingError(f"{settings.checkpoint} holds a dense network ({info['model']['name']}); "
                                f"labelled patches score patch classifiers: evaluate it on images "
                                f"with label masks (a segmentation data group)")
        ds = build_dataset(data.kind, data.root, settings.split, patch_size=info["patch_size"],
                           in_channels=info["in_channels"], class_names=info["class_names"],
                           mean=info["mean"], std=info["std"])
    else:
        # what the training run's scan recorded is not decoded again
        with ScanCache(data.root, progress=True) as cache:
            ds = build_dataset(data.kind, data.root, settings.split, scan_cache=cache, **kw)
            validate_dataset(ds, cache=cache)
        ds.mean, ds.std = list(info["mean"]), list(info["std"])  # the training normalisation
    if (ds.num_classes, ds.in_channels) != (info["num_classes"], info["in_channels"]):
        raise TrainingError(f"{settings.checkpoint} classifies {info['num_classes']} classes of "
                            f"{info['in_channels']}-channel images but split {settings.split!r} of "
                            f"{data.root} has {ds.num_classes} classes and {ds.in_channels} channels; "
                            f"evaluate it on the data it was trained for")
    # the layout the run had: inputs channels-last, the weights too where it trained the
    # classifier itself (patch method, labelled patches, an already dense network)
    trained_itself = info["patch_size"] is None or info["method"] in ("patch", "classify")
    net = model
    if not patches and info["patch_size"] is not None:
        net = densify(model, info["patch_size"], pad_mode=info["pad_mode"], pad_value=info["pad_value"])
    if channels_last and trained_itself:
        model.to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(
        ds, settings.batch_size, shuffle=False, num_workers=worker_count(settings.num_workers, device),
        collate_fn=collate_patches if patches else collate_images, pin_memory=device.type == "cuda")
    plan = None
    if not patches:
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        budget = memory_limit_bytes(settings.memory_limit_mb, device) - weights
        plan = plan_validation(net, ds.in_channels, settings.batch_size, budget, amp_dtype is not None,
                               channels_last)
        if plan is not None:
            logger.info(plan.describe(settings.batch_size))
    scores = (lambda x: model(x).flatten(1)) if patches else net  # (N, K) from (N, K) or (N, K, 1, 1)
    with runtime.float32_math(precision):  # the float32 math of the run's validation
        cm = evaluate(scores, loader, ds.num_classes, info["ignore_index"] if not patches else 255, device,
                      amp_dtype, channels_last, plan=plan, progress=True)
    names = [str(c) for c in ds.class_names]
    if patches:
        metrics = classification_metrics(cm)
        table = report.accuracy_table(metrics, names)
    else:
        metrics = cm.compute()
        table = report.iou_table(metrics, names)
    logger.info(table)
    out = dict(metrics, checkpoint=str(settings.checkpoint), step=checkpoint.get("step"),
               data=data.kind, root=str(data.root), split=settings.split, model=info["model"]["name"],
               method=info["method"], class_names=names, device=str(device))
    path = Path(out_dir) / "metrics.json"
    report.write_json(path, out)
    logger.info(f"wrote {path}")
    return metrics
