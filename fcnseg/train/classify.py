"""Train a patch classifier on labelled patches, then use it on whole images.

The classic workflow of the method: a classifier is trained as a classifier (batches of
patches, one label each, per-patch cross-entropy) and its checkpoint is then densified
by inference to label every pixel of whole images. `train_classifier(settings, run_dir)`
takes the same TrainSettings as `fcnseg.train.run` (which hands it every data group of
kind "patches", fcnseg.data.patches), counts the run in optimiser steps the same way
(trainer.steps or trainer.epochs, validation every trainer.eval_every) and writes the
same files: last.pt / best.pt (the checkpoint format of fcnseg.checkpoint, so
tools/infer.py uses them unchanged), metrics.json (accuracy, per-class accuracy and
the confusion matrix), metrics.csv and curves.png.

The patch size comes from the data. A zoo builder that takes `patch_size` (patchnet)
is built for it; any other model must already classify patches of that size, else
the run stops before the first step with the sizes that would fit.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path

import torch

import fcnseg
from fcnseg import runtime
from fcnseg.data.datasets import compute_mean_std
from fcnseg.data.patches import PatchFolderDataset
from fcnseg.checkpoint import build_model, model_spec
from fcnseg.train import report
from fcnseg.train.build import build_transform
from fcnseg.train.metrics import ConfusionMatrix
from fcnseg.train.run_base import TrainingError, TrainingRun, _worker_init
from fcnseg.train.schedule import StepPlan
from fcnseg.train.settings import SettingsError, TrainSettings
from fcnseg.train.trainer import evaluate

METHOD = "classify"  # the checkpoint's "method": trained as a classifier on labelled patches
CURVES = (("val_accuracy", "accuracy"), ("val_mean_class_accuracy", "mean class accuracy"))
MEAN_STD_SAMPLES = 4096  # training patches read for the default normalisation


def _datasets(data, aug):
    """(train, val) PatchFolderDatasets; val takes train's classes, size, channels and
    normalisation. data: DataSettings (options: in_channels, mean, std)."""
    opts = dict(data.options)
    unknown = sorted(set(opts) - {"in_channels", "mean", "std"})
    if unknown:
        raise SettingsError(f"data.{unknown[0]}", "unknown setting for kind=patches; it takes root, "
                            "train_split, val_split, in_channels, mean, std")
    mean, std = opts.get("mean"), opts.get("std")
    train = PatchFolderDataset(data.root, data.train_split, in_channels=opts.get("in_channels"),
                               transform=build_transform(dataclasses.asdict(aug)))
    if mean is None or std is None:  # the training patches' own statistics, stored in the checkpoint
        m, s = compute_mean_std(train, max_samples=MEAN_STD_SAMPLES)
        mean, std = mean if mean is not None else m, std if std is not None else s
    train.mean, train.std = [float(v) for v in mean], [float(v) for v in std]
    if len(train.mean) != train.in_channels or len(train.std) != train.in_channels:
        raise SettingsError("data.mean", f"data.mean and data.std need {train.in_channels} values (one per "
                            f"channel of {train.source}); got mean={train.mean} std={train.std}")
    val = PatchFolderDataset(data.root, data.val_split, patch_size=train.patch_size,
                             in_channels=train.in_channels, class_names=train.class_names,
                             mean=train.mean, std=train.std)
    return train, val


def _fit_model_to_patches(model, patch_size, num_classes, in_channels):
    """The model recipe for this data (model: ModelSettings): a zoo builder with a
    patch_size keyword gets the data's patch; any other model must already take it."""
    kwargs = dict(model.kwargs or {})
    if model.builder == "zoo" and kwargs.get("patch_size") is None:
        import fcnseg.zoo
        build = fcnseg.zoo.spec(model.name).build
        if "patch_size" in inspect.signature(build).parameters:
            P, Q = patch_size
            kwargs["patch_size"] = P if P == Q else [P, Q]
    spec = model_spec({"builder": model.builder, "name": model.name, "kwargs": kwargs},
                      num_classes, in_channels)
    try:
        model = build_model(spec)
    except ValueError as e:  # e.g. a builder that cannot reach the data's patch size
        raise TrainingError(f"model {spec['name']} for the {patch_size[1]}x{patch_size[0]} patches of the "
                            f"data: {e}") from e
    got = getattr(model, "patch_size", None)
    if got is None:
        raise TrainingError(f"model {spec['name']} is a dense network (no patch size); labelled patches "
                            f"train a patch classifier: use model=patchnet or another zoo network")
    if tuple(got) != tuple(patch_size):
        P, Q = patch_size
        if "patch_size" in spec["kwargs"]:
            fix = (f"set model.kwargs.patch_size to {P if P == Q else [P, Q]} or null (the data's size), or "
                   f"cut the patches at {got[1]}x{got[0]}")
            fixes = ["model.kwargs.patch_size=null"]
        else:
            fix = (f"cut the patches at {got[1]}x{got[0]}, the size this model fits, or train a model built "
                   f"for {Q}x{P}: model=patchnet computes its layers for the data's patch")
            fixes = ["model=patchnet"]
        raise TrainingError(
            f"model {spec['name']} classifies {got[1]}x{got[0]} patches (computed from its layers) but the "
            f"data's patches are {Q}x{P} (WxH); patches are never resized. Fix: {fix}", fixes=fixes)
    return spec, model


def _collate(batch):
    # "mask": a patch's label is the label of its centre pixel, so the segmentation
    # evaluation (trainer.evaluate) counts patches as it counts pixels
    return {"image": torch.stack([b["image"] for b in batch]),
            "mask": torch.stack([b["label"] for b in batch]),
            "name": [b["name"] for b in batch]}


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


def train_classifier(settings: TrainSettings | dict, run_dir, *, exit_on_signal=False) -> dict:
    """Train settings.model on the labelled patches of settings.data (kind "patches");
    returns the final validation metrics (also written to run_dir/metrics.json), or
    {"interrupted": True, "step", "run_dir", "signal"} after SIGTERM/SIGINT (last.pt
    then resumes the run). settings: TrainSettings, or the plain nested dicts
    TrainSettings.from_dict reads. exit_on_signal: as for fcnseg.train.run."""
    if not isinstance(settings, TrainSettings):
        settings = TrainSettings.from_dict(settings)
    d = runtime.init_distributed(settings.trainer.device)
    try:
        if d.enabled:
            raise TrainingError("training on labelled patches runs in one process; start it without "
                                "torchrun (trainer.device=cuda uses one GPU)")
        return _ClassifierRun(settings, Path(run_dir), d).fit(exit_on_signal)
    finally:
        runtime.cleanup_distributed(d)


class _ClassifierRun(TrainingRun):
    SCORE = "accuracy"

    def __init__(self, settings, run_dir, env):
        super().__init__(settings, run_dir, env)
        t = self.t
        device = env.device
        self.train_ds, self.val_ds = _datasets(settings.data, settings.aug)
        ds = self.train_ds
        m = settings.model
        self.spec, self.model = _fit_model_to_patches(m, ds.patch_size, ds.num_classes, ds.in_channels)
        self.model.to(device)
        self.patch_size = tuple(self.model.patch_size)
        self.pad = {"pad_mode": m.pad_mode, "pad_value": float(m.pad_value)}
        # the checkpoint is only useful if inference can densify it: find out now, not after training
        try:
            fcnseg.densify(self.model.eval(), self.patch_size, **self.pad)  # eval: as inference sees it
        except fcnseg.ConversionError as e:
            raise TrainingError(f"model {self.spec['name']} cannot be run densely on whole images ({e}); "
                                f"pick a model that converts (docs/zoo.md)") from e
        self.channels_last = True if t.channels_last == "auto" else bool(t.channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

        # balance_classes draws patches with probability 1 / (patches of their class), with
        # replacement
        if t.balance_classes:
            w = 1.0 / torch.as_tensor(ds.class_counts, dtype=torch.float64).clamp(min=1)
            labels = torch.tensor([smp.label for smp in ds.samples])
            sampler = torch.utils.data.WeightedRandomSampler(w[labels], len(ds), generator=self.gen)
        else:
            sampler = torch.utils.data.RandomSampler(ds, generator=self.gen)
        pin = device.type == "cuda"
        self.train_loader = torch.utils.data.DataLoader(
            ds, t.batch_size, sampler=sampler, num_workers=t.num_workers, collate_fn=_collate,
            pin_memory=pin, generator=self.gen, worker_init_fn=_worker_init)
        self.val_loader = torch.utils.data.DataLoader(
            self.val_ds, t.val_batch_size, shuffle=False, num_workers=t.num_workers, collate_fn=_collate,
            pin_memory=pin)
        self.plan = StepPlan.from_settings(t, len(self.train_loader))
        self._build_optimisation(ds.class_counts)
        if settings.resume:
            self._resume(settings.resume)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_meta(self):
        return dict(patch_size=list(self.patch_size), **self.pad, **self.train_ds.meta, method=METHOD,
                    output_stride=1)

    def _check_resumable(self, path, ck):
        if ck["model"] != self.spec or ck.get("method") != METHOD:
            raise TrainingError(f"resume: {path} holds model {ck['model']} (method {ck.get('method')}) but "
                                f"this run builds {self.spec} on labelled patches; resume with the same "
                                f"model and data")

    # --------------------------------------------------------------------- training
    def _before_steps(self):
        """A finished run resumed without more steps would only rewrite its report: refuse it."""
        plan = self.plan
        if self.step >= plan.total_steps:
            raise TrainingError(f"nothing to train: the run has done {self.step} of its {plan.total_steps} "
                                f"steps (raise trainer.steps to continue it)", fixes=[
                                    f"trainer.steps={2 * plan.total_steps}"])
        return True

    def _run_step(self, batch, epoch, i):
        return self._train_step(batch)  # a classifier step depends on its batch only

    def _train_step(self, batch):
        """One optimiser step -> the loss; the weights change only inside the stop lock."""
        x, y = self._inputs(batch)  # (N, C, P, Q), (N,) the patches' labels
        self.optimizer.zero_grad(set_to_none=True)
        with runtime.autocast(self.env.device, self.amp_dtype):
            logits = self.model(x).flatten(1)  # (N, K) from (N, K) or (N, K, 1, 1)
        loss = self.loss_fn(logits.float(), y)
        self._check_finite(loss)
        self.scaler.scale(loss).backward()
        self._commit_step()
        return loss.item()

    def _validate(self, losses, seconds):
        """The history row of a validation after step self.step; None when a stop request
        interrupted it."""
        self.model.eval()
        scores = lambda x: self.model(x).flatten(1)  # noqa: E731  (N, K) from (N, K) or (N, K, 1, 1)
        cm = evaluate(scores, self.val_loader, self.train_ds.num_classes, device=self.env.device,
                      amp_dtype=self.amp_dtype, channels_last=self.channels_last, stop=self.stop)
        if cm is None:
            return None
        metrics = classification_metrics(cm)
        loss = sum(losses) / max(len(losses), 1)
        self.log(f"step {self.step}/{self.plan.total_steps}: loss {loss:.4f}  val accuracy "
                 f"{metrics['accuracy']:.4f}  mean class accuracy {metrics['mean_class_accuracy']:.4f}  "
                 f"train {seconds:.1f}s")
        return {
            "step": self.step, "epoch": round(self.step / self.plan.steps_per_epoch, 3), "train_loss": loss,
            "val_accuracy": metrics["accuracy"], "val_mean_class_accuracy": metrics["mean_class_accuracy"],
            "lr": self.scheduler.get_last_lr()[0], "method": METHOD, "train_time_s": round(seconds, 3),
            "metrics": metrics}

    def _pictures(self):
        report.plot_curves(self.run_dir / "curves.png", self.history, scores=CURVES)

    def _run_summary(self):
        P, Q = self.patch_size
        ds, plan = self.train_ds, self.plan
        return (f"model {self.spec['name']} on {Q}x{P} patches: {len(ds)} train / {len(self.val_ds)} val "
                f"patches, {ds.num_classes} classes {ds.class_names}, {ds.in_channels} channel(s), device "
                f"{self.env.device}, {plan.total_steps} steps ({plan.epochs:.1f} epochs of "
                f"{plan.steps_per_epoch}), validation every {plan.eval_every}, run dir {self.run_dir}")

    def _final_report(self, metrics):
        names = list(self.train_ds.class_names)
        self.log(report.iou_table(metrics, names, ("per_class_accuracy", "accuracy"),
                                  (("accuracy", "accuracy"), ("mean_class_accuracy", "mean class accuracy"))))
        out = dict(metrics, method=METHOD, model=self.spec["name"], patch_size=list(self.patch_size),
                   best_accuracy=self.best, steps=self.step, class_names=names, device=str(self.env.device),
                   world_size=1, train_times_s=[h["train_time_s"] for h in self.history])
        report.write_json(self.run_dir / "metrics.json", out)
        self.log(f"wrote metrics.json, metrics.csv, curves.png, last.pt, best.pt to {self.run_dir}")
