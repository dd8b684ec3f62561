"""Patch classification: labelled patches train a patch classifier, used later on whole images.

The classic workflow of the method: a classifier is trained as a classifier (batches of
patches, one label each, per-patch cross-entropy) and its checkpoint is then densified
by inference to label every pixel of whole images. The run (data kind "patches",
fcnseg.data.patches) takes the same TrainSettings as any other, counts optimiser steps
the same way (trainer.steps or trainer.epochs, validation every trainer.eval_every) and
writes the same files: last.pt / best.pt (the checkpoint format of fcnseg.checkpoint, so
tools/infer.py uses them unchanged), metrics.json (accuracy, per-class accuracy and
the confusion matrix), metrics.csv and curves.png.

The patch size comes from the data. A zoo builder that takes `patch_size` (patchnet)
is built for it; any other model must already classify patches of that size, else
the run stops before the first step with the sizes that would fit.
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from fcnseg import runtime
from fcnseg.convert.errors import ConversionError
from fcnseg.data import DatasetError, build_dataset, build_transform, compute_mean_std, resolve_mean_std
from fcnseg.dense import densify
from fcnseg.settings import SettingsError
from fcnseg.train import report
from fcnseg.train.errors import TrainingError
from fcnseg.train.evaluate import classification_metrics, evaluate
from fcnseg.train.loaders import collate_patches, seed_worker, worker_count
from fcnseg.train.networks import channels_last_of, padding_of, patch_classifier
from fcnseg.train.task import Task

logger = logging.getLogger(__name__)

METHOD = "classify"  # the checkpoint's "method": trained as a classifier on labelled patches
CURVES = (("val_accuracy", "accuracy"), ("val_mean_class_accuracy", "mean class accuracy"))
MEAN_STD_SAMPLES = 4096  # training patches read for the default normalisation
OPTIONS = ("in_channels", "mean", "std")  # the data settings of kind "patches" besides the splits


def build_datasets(data, aug):
    """(train, val) PatchFolderDatasets; val takes train's classes, size, channels and
    normalisation. data: DataSettings (options: in_channels, mean, std); a mean or std
    left out is the training patches' own, stored in the checkpoint."""
    opts = dict(data.options)
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise SettingsError(f"data.{unknown[0]}", "unknown setting for kind=patches; it takes root, "
                            "train_split, val_split, in_channels, mean, std")
    train = build_dataset(data.kind, data.root, data.train_split, in_channels=opts.get("in_channels"),
                          transform=build_transform(dataclasses.asdict(aug)))
    try:
        train.mean, train.std = resolve_mean_std(
            opts.get("mean"), opts.get("std"), train.in_channels, train.source,
            fallback=lambda: compute_mean_std(train, max_samples=MEAN_STD_SAMPLES))
    except DatasetError as e:
        raise SettingsError("data.mean", f"data.mean and data.std: {e}") from None
    val = build_dataset(data.kind, data.root, data.val_split, patch_size=train.patch_size,
                        in_channels=train.in_channels, class_names=train.class_names,
                        mean=train.mean, std=train.std)
    return train, val


class PatchClassificationTask(Task):
    SCORE = "accuracy"

    @classmethod
    def check_environment(cls, env):
        if env.enabled:
            raise TrainingError("training on labelled patches runs in one process; start it without "
                                "torchrun (trainer.device=cuda uses one GPU)")

    def __init__(self, settings, env, generator):
        self.settings, self.env = settings, env
        trainer = settings.trainer
        device = env.device
        self.method = METHOD
        self.train_ds, self.val_ds = build_datasets(settings.data, settings.aug)
        ds = self.train_ds
        self.class_counts = ds.class_counts
        self.spec, self.model = patch_classifier(settings.model, ds.patch_size, ds.num_classes,
                                                 ds.in_channels)
        self.model.to(device)
        self.patch_size = tuple(self.model.patch_size)
        self.pad = padding_of(settings.model)
        # the checkpoint is only useful if inference can densify it: find out now, not after training
        try:
            densify(self.model.eval(), self.patch_size, **self.pad)  # eval: as inference sees it
        except ConversionError as e:
            raise TrainingError(f"model {self.spec['name']} cannot be run densely on whole images ({e}); "
                                f"pick a model that converts (docs/zoo.md)") from e
        self.channels_last = channels_last_of(trainer)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

        # balance_classes draws patches with probability 1 / (patches of their class), with
        # replacement
        if trainer.balance_classes:
            w = 1.0 / torch.as_tensor(ds.class_counts, dtype=torch.float64).clamp(min=1)
            labels = torch.tensor([sample.label for sample in ds.samples])
            sampler = torch.utils.data.WeightedRandomSampler(w[labels], len(ds), generator=generator)
        else:
            sampler = torch.utils.data.RandomSampler(ds, generator=generator)
        pin = device.type == "cuda"
        workers = worker_count(trainer.num_workers, device)
        self.train_loader = torch.utils.data.DataLoader(
            ds, trainer.batch_size, sampler=sampler, num_workers=workers,
            collate_fn=collate_patches, pin_memory=pin, generator=generator, worker_init_fn=seed_worker)
        self.val_loader = torch.utils.data.DataLoader(
            self.val_ds, trainer.val_batch_size, shuffle=False, num_workers=workers,
            collate_fn=collate_patches, pin_memory=pin)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_meta(self):
        return dict(patch_size=list(self.patch_size), **self.pad, **self.train_ds.meta, method=METHOD,
                    output_stride=1)

    def check_resumable(self, run, path, checkpoint):
        if checkpoint["model"] != self.spec or checkpoint.get("method") != METHOD:
            raise TrainingError(f"resume: {path} holds model {checkpoint['model']} (method "
                                f"{checkpoint.get('method')}) but this run builds {self.spec} on labelled "
                                f"patches; resume with the same model and data")

    # --------------------------------------------------------------------- training
    def train_mode(self):
        self.model.train()

    def before_steps(self, run):
        """A finished run resumed without more steps would only rewrite its report: refuse it."""
        plan = run.plan
        if run.step >= plan.total_steps:
            raise TrainingError(f"nothing to train: the run has done {run.step} of its {plan.total_steps} "
                                f"steps (raise trainer.steps to continue it)", fixes=[
                                    f"trainer.steps={2 * plan.total_steps}"])
        return True

    def step(self, run, batch, epoch, index):
        """One optimiser step -> the loss; a classifier step depends on its batch only."""
        x, y = run.inputs(batch)  # (N, C, P, Q), (N,) the patches' labels
        run.optimizer.zero_grad(set_to_none=True)
        with runtime.autocast(self.env.device, run.amp_dtype):
            logits = self.model(x).flatten(1)  # (N, K) from (N, K) or (N, K, 1, 1)
        loss = run.loss_fn(logits.float(), y)
        run.check_finite(loss)
        run.scaler.scale(loss).backward()
        run.commit_step()
        return loss.item()

    def validate(self, run, losses, train_time):
        self.model.eval()
        scores = lambda x: self.model(x).flatten(1)  # noqa: E731  (N, K) from (N, K) or (N, K, 1, 1)
        cm = evaluate(scores, self.val_loader, self.train_ds.num_classes, device=self.env.device,
                      amp_dtype=run.amp_dtype, channels_last=self.channels_last, stop=run.stop,
                      progress=True)
        if cm is None:
            return None
        metrics = classification_metrics(cm)
        loss = sum(losses) / max(len(losses), 1)
        plan = run.plan
        logger.info(f"step {run.step}/{plan.total_steps}: loss {loss:.4f}  val accuracy "
                    f"{metrics['accuracy']:.4f}  mean class accuracy {metrics['mean_class_accuracy']:.4f}  "
                    f"train {train_time:.1f}s")
        return {
            "step": run.step, "epoch": round(run.step / plan.steps_per_epoch, 3), "train_loss": loss,
            "val_accuracy": metrics["accuracy"], "val_mean_class_accuracy": metrics["mean_class_accuracy"],
            "lr": run.scheduler.get_last_lr()[0], "method": METHOD, "train_time_s": round(train_time, 3),
            "metrics": metrics}

    # ------------------------------------------------------------------- reports
    def pictures(self, run):
        report.plot_curves(run.run_dir / "curves.png", run.history, scores=CURVES)

    def summary(self, run):
        P, Q = self.patch_size
        ds, plan = self.train_ds, run.plan
        return (f"model {self.spec['name']} on {Q}x{P} patches: {len(ds)} train / {len(self.val_ds)} val "
                f"patches, {ds.num_classes} classes {ds.class_names}, {ds.in_channels} channel(s), device "
                f"{self.env.device}, {plan.total_steps} steps ({plan.epochs:.1f} epochs of "
                f"{plan.steps_per_epoch}), validation every {plan.eval_every}, run dir {run.run_dir}")

    def final_report(self, run, metrics):
        names = list(self.train_ds.class_names)
        logger.info(report.accuracy_table(metrics, names))
        out = dict(metrics, method=METHOD, model=self.spec["name"], patch_size=list(self.patch_size),
                   best_accuracy=run.best, steps=run.step, class_names=names, device=str(self.env.device),
                   world_size=1, train_times_s=[h["train_time_s"] for h in run.history])
        report.write_json(run.run_dir / "metrics.json", out)
        logger.info(f"wrote metrics.json, metrics.csv, curves.png, last.pt, best.pt to {run.run_dir}")
