"""Pixel segmentation: images with label masks train a pixelwise classifier.

A patch classifier trains densely (one pass of its dense net at the output stride over
whole images, the loss at the sampled pixels) or patch by patch (the classic baseline);
an already dense network (smp) trains at its native resolution. Validation runs the dense
net at stride 1, every pixel; the report is the per-class IoU table and metrics.json.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time

import torch

from fcnseg import runtime
from fcnseg.data import ScanCache, build_dataset, build_transform, validate_dataset
from fcnseg.dense import freeze_batchnorm
from fcnseg.train import cost, report
from fcnseg.train.errors import TrainingError
from fcnseg.train.evaluate import evaluate, plan_validation, predict_labels
from fcnseg.train.loaders import collate_images, epoch_seed, seed_worker, worker_count
from fcnseg.train.networks import build_networks, padding_of
from fcnseg.train.sampling import gather_targets, training_pixels
from fcnseg.train.step import dense_logits, full_precision, patch_backward
from fcnseg.train.task import Task

logger = logging.getLogger(__name__)


def build_datasets(data, aug, env=None):
    """(train, val, pixels per class of train) of the data settings, every file checked.
    The check decodes only what the data root's scan cache (fcnseg.data.scan) does not
    know; in a torchrun job rank 0 scans and writes the cache while the others wait, then
    they read it (a file rank 0 could not read they decode themselves, to fail alike)."""
    kw = {k: v for k, v in data.options.items() if v is not None}
    main = env is None or env.main
    with _main_rank_first(env), ScanCache(data.root, progress=main, save=main) as cache:
        train = build_dataset(data.kind, data.root, data.train_split, scan_cache=cache,
                              transform=build_transform(dataclasses.asdict(aug)), **kw)
        val = build_dataset(data.kind, data.root, data.val_split, scan_cache=cache, **kw)
        # clear errors (file + fix) for missing masks, bad labels, size mismatches, empty
        # splits, unreadable images: before the first step, not an hour into the run
        summary = validate_dataset(train, cache=cache)
        validate_dataset(val, cache=cache)
    if (train.num_classes, train.in_channels) != (val.num_classes, val.in_channels):
        raise TrainingError(f"train and val splits of {data.root} disagree: "
                            f"{train.num_classes} vs {val.num_classes} classes, "
                            f"{train.in_channels} vs {val.in_channels} channels")
    return train, val, summary.class_pixels


@contextlib.contextmanager
def _main_rank_first(env):
    """Rank 0 runs the block while the other ranks wait; then they run it."""
    if env is None or not env.enabled:
        yield
        return
    if not env.main:
        runtime.barrier()
    try:
        yield
    finally:
        if env.main:
            runtime.barrier()


class SegmentationTask(Task):
    SCORE = "miou"

    def __init__(self, settings, env, generator):
        self.settings, self.env = settings, env
        trainer = settings.trainer
        self.train_ds, self.val_ds, self.class_counts = build_datasets(settings.data, settings.aug, env)
        ds = self.train_ds
        self.num_classes, self.in_channels = ds.num_classes, ds.in_channels
        self.ignore_index = getattr(ds, "ignore_index", 255)
        self.method = trainer.method
        self.nets = nets = build_networks(settings, self.num_classes, self.in_channels, env.device)
        self.spec, self.model, self.patch_size = nets.spec, nets.model, nets.patch_size
        self.train_net, self.eval_net, self.stride = nets.train_net, nets.eval_net, nets.stride
        self.has_bn, self.channels_last = nets.has_bn, nets.channels_last
        self.pad = padding_of(settings.model)
        self.step_net = self.train_net
        if env.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.step_net = DDP(self.train_net,
                                device_ids=[env.device.index] if env.device.type == "cuda" else None,
                                # a head the dense graph does not compute gets no gradient
                                find_unused_parameters=bool(runtime.unread_parameters(self.train_net)))
        self._build_loaders(generator)
        self.patch_chunk = self.val_plan = None

    def _build_loaders(self, generator):
        trainer, env = self.settings.trainer, self.env
        if env.enabled:
            sampler = torch.utils.data.DistributedSampler(
                self.train_ds, env.world_size, env.rank, shuffle=True, seed=trainer.seed)
            val_sampler = runtime.ShardSampler(len(self.val_ds), env.rank, env.world_size)
        else:
            sampler = torch.utils.data.RandomSampler(self.train_ds, generator=generator)
            val_sampler = None
        pin = env.device.type == "cuda"
        workers = worker_count(trainer.num_workers, env.device)
        self.train_loader = torch.utils.data.DataLoader(
            self.train_ds, trainer.batch_size, sampler=sampler, num_workers=workers,
            collate_fn=collate_images, generator=generator, worker_init_fn=seed_worker,
            pin_memory=pin, persistent_workers=False)
        self.val_loader = torch.utils.data.DataLoader(
            self.val_ds, trainer.val_batch_size, sampler=val_sampler, shuffle=False,
            num_workers=workers, collate_fn=collate_images, pin_memory=pin)

    # ------------------------------------------------------------------ cost
    def estimate_step(self, run):
        trainer = self.settings.trainer
        c, h, w = self.train_ds[0]["image"].shape
        setup = cost.StepSetup(
            shape=(min(trainer.batch_size, len(self.train_ds)), c, h, w), method=self.method,
            patch_size=self.patch_size, optimizer=self.settings.optim.name,
            sample_fraction=trainer.sample_fraction, patch_memory_mb=trainer.patch_memory_mb,
            channels_last=self.channels_last, device=self.env.device)
        step, self.patch_chunk = cost.check_training_step(self.settings, self.nets, setup,
                                                          run.plan.total_steps)
        # validation runs beside the weights and optimiser state, once the step's maps are freed
        budget = cost.memory_limit_bytes(trainer.memory_limit_mb, self.env.device) - step.state_bytes
        self.val_plan = plan_validation(self.eval_net, self.in_channels, trainer.val_batch_size, budget,
                                        run.amp_dtype is not None, self.channels_last)
        if self.val_plan is not None:
            logger.info(self.val_plan.describe(trainer.val_batch_size))
        return step

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_meta(self):
        ds = self.train_ds
        return dict(
            patch_size=list(self.patch_size) if self.patch_size else None, **self.pad,
            in_channels=self.in_channels, num_classes=self.num_classes,
            class_names=[str(c) for c in ds.class_names],
            palette=[[int(v) for v in row] for row in ds.palette],
            mean=[float(v) for v in ds.mean], std=[float(v) for v in ds.std],
            ignore_index=self.ignore_index, method=self.method, output_stride=self.stride)

    def check_resumable(self, run, path, checkpoint):
        if checkpoint["model"] != self.spec:
            raise TrainingError(f"resume: {path} holds model {checkpoint['model']} but the settings "
                                f"build {self.spec}; resume with the same model and data")
        total = run.plan.total_steps
        if checkpoint.get("total_steps", total) != total:
            logger.info(f"resume: the step budget changed from {checkpoint['total_steps']} to "
                        f"{total}; the schedule follows the new one")

    # ------------------------------------------------------------------- training
    def train_mode(self):
        self.train_net.train()
        self.model.train()
        if self.has_bn and self.patch_size is not None:  # see networks.build_networks
            freeze_batchnorm(self.model)

    def before_steps(self, run):
        """A run stopped during a validation does that validation first: its last.pt is of
        the step whose validation did not finish."""
        if run.step and run.plan.evaluates_after(run.step) and \
                (not run.history or run.history[-1]["step"] != run.step):
            return run.validate([], 0.0)
        return True

    def step(self, run, batch, epoch, index):
        """One optimiser step on the batch -> the loss (float) or None when the batch has
        no labelled pixel. Weights change only inside the stop lock, at the end."""
        env, trainer = self.env, self.settings.trainer
        x, y = run.inputs(batch)
        g = torch.Generator().manual_seed(epoch_seed(trainer.seed, epoch) * 10_007 + index
                                          + 1_000_003 * env.rank)
        pixels = training_pixels(y, trainer.sample_fraction, trainer.balance_classes, self.stride,
                               self.ignore_index, g)
        target = gather_targets(y, pixels)
        if target.numel() == 0:  # an all-ignore batch teaches nothing
            return None
        run.optimizer.zero_grad(set_to_none=True)
        autocast = lambda: runtime.autocast(env.device, run.amp_dtype)  # noqa: E731
        where = f" (epoch {epoch + 1}, batch {index + 1})"
        scaler = run.scaler
        if self.method == "dense":
            with autocast():
                logits = dense_logits(self.step_net, x, pixels, self.stride)
            loss = run.loss_fn(full_precision(logits), target)
            run.check_finite(loss, where)
            scaler.scale(loss).backward()
        else:
            loss = patch_backward(self.step_net, x, pixels, self.patch_size,
                                  lambda lg: scaler.scale(run.loss_fn(lg, target)),
                                  chunk=self.patch_chunk, autocast=autocast, **self.pad)
            loss = loss / scaler.get_scale() if scaler.is_enabled() else loss
            run.check_finite(loss, where)
        run.commit_step()
        return loss.item()

    def validate(self, run, losses, train_time):
        env = self.env
        t0 = time.perf_counter()
        self.eval_net.eval()
        self.model.eval()
        cm = evaluate(self.eval_net, self.val_loader, self.num_classes, self.ignore_index,
                      env.device, run.amp_dtype, self.channels_last,
                      stop=run.stop if not env.enabled else None, plan=self.val_plan,
                      progress=env.main)
        if cm is None:
            return None
        metrics = cm.compute()
        mean_loss = runtime.all_reduce_mean(sum(losses) / max(len(losses), 1), env)
        plan = run.plan
        row = {
            "step": run.step, "epoch": round(run.step / plan.steps_per_epoch, 3),
            "train_loss": mean_loss, "val_miou": metrics["miou"],
            "val_pixel_acc": metrics["pixel_acc"], "lr": run.scheduler.get_last_lr()[0],
            "method": self.method, "train_time_s": round(train_time, 3),
            "eval_time_s": round(time.perf_counter() - t0, 3), "metrics": metrics}
        logger.info(f"step {run.step}/{plan.total_steps}: loss {mean_loss:.4f}  val mIoU "
                    f"{metrics['miou']:.4f}  pixel acc {metrics['pixel_acc']:.4f}  train "
                    f"{train_time:.1f}s")
        return row

    # ------------------------------------------------------------------- reports
    def pictures(self, run):
        report.plot_curves(run.run_dir / "curves.png", run.history)
        self._grid(run)

    def _grid(self, run):
        n = self.settings.trainer.grid_images
        if n <= 0:
            return
        items = [self.val_ds[i] for i in range(min(n, len(self.val_ds)))]
        preds = [predict_labels(self.eval_net, it["image"], self.val_plan, self.env.device,
                                run.amp_dtype, self.channels_last) for it in items]
        report.plot_grid(run.run_dir / "val_grid.png", [it["image"] for it in items],
                         [it["mask"] for it in items], preds, self.train_ds.palette,
                         self.train_ds.mean, self.train_ds.std, self.ignore_index)

    def summary(self, run):
        env, plan = self.env, run.plan
        return (f"model {self.spec['name']} ({self.spec['builder']}), patch size "
                f"{self.patch_size}, method {self.method}, output stride {self.stride}, device "
                f"{env.device}, precision {run.precision.describe()}, world size {env.world_size}, "
                f"{plan.total_steps} steps ({plan.epochs:.1f} epochs of "
                f"{plan.steps_per_epoch}), validation every {plan.eval_every}, "
                f"run dir {run.run_dir}")

    def final_report(self, run, metrics):
        if not self.env.main:
            return
        names = [str(c) for c in self.train_ds.class_names]
        logger.info(report.iou_table(metrics, names))
        out = dict(metrics, method=self.method, model=self.spec["name"],
                   patch_size=list(self.patch_size) if self.patch_size else None,
                   output_stride=self.stride, best_miou=run.best, steps=run.step,
                   class_names=names, device=str(self.env.device),
                   world_size=self.env.world_size,
                   train_times_s=[h["train_time_s"] for h in run.history],
                   eval_times_s=[h["eval_time_s"] for h in run.history])
        report.write_json(run.run_dir / "metrics.json", out)
        logger.info(f"wrote metrics.json, metrics.csv, curves.png, val_grid.png, last.pt, best.pt "
                    f"to {run.run_dir}")
