"""The training run: settings -> datasets, model, dense nets, cost check -> optimiser steps
(validation, checkpoints and pictures every `eval_every` steps and at the end) -> report.

`run(settings, run_dir)` takes a TrainSettings, or the plain nested dicts a config system
produces (tools/train.py passes its Hydra config that way; the library never imports
Hydra).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

import fcnseg
from fcnseg import runtime
from fcnseg.checkpoint import build_model, model_spec
from fcnseg.train import cost, report
from fcnseg.train.build import build_transform
from fcnseg.train.metrics import ConfusionMatrix
from fcnseg.train.run_base import TrainingError, TrainingRun, _epoch_seed, _worker_init
from fcnseg.train.sampling import gather_targets, sample_pixels
from fcnseg.train.schedule import StepPlan
from fcnseg.train.settings import SettingsError, TrainSettings, resolve_output_stride
from fcnseg.train.step import dense_logits, full_precision, patch_backward


def run(settings, run_dir, *, exit_on_signal=False):
    """Train as `settings` say, writing checkpoints and reports into run_dir. Returns the
    final validation metrics (also on rank > 0), or {"interrupted": True, "step": n,
    "run_dir": ...} after a stop signal. exit_on_signal: a command line run; a step
    still busy 2 s after SIGTERM/SIGINT is abandoned and the process exits (see
    fcnseg.train.signals). A library caller keeps its process: the run stops at the
    next step boundary."""
    if not isinstance(settings, TrainSettings):
        settings = TrainSettings.from_dict(settings)
    if settings.data.kind == "patches":
        # labelled patch folders train the classifier directly: classify.train_classifier(
        # settings: TrainSettings, run_dir: Path) -> metrics dict, same outputs as here
        from fcnseg.train.classify import train_classifier
        return train_classifier(settings, Path(run_dir), exit_on_signal=exit_on_signal)
    env = runtime.init_distributed(settings.trainer.device)
    try:
        return Trainer(settings, Path(run_dir), env).fit(exit_on_signal)
    finally:
        runtime.cleanup_distributed(env)


# ----------------------------------------------------------------------------- data
def _datasets(data, aug):
    import fcnseg.data
    kw = {k: v for k, v in data.options.items() if v is not None}
    aug_cfg = dataclasses.asdict(aug)
    train = fcnseg.data.build_dataset(data.kind, data.root, data.train_split,
                                      transform=build_transform(aug_cfg), **kw)
    val = fcnseg.data.build_dataset(data.kind, data.root, data.val_split, **kw)
    # clear errors (file + fix) for missing masks, bad labels, size mismatches, empty
    # splits, unreadable images: before the first step, not an hour into the run
    summary = fcnseg.data.validate_dataset(train)
    fcnseg.data.validate_dataset(val)
    if (train.num_classes, train.in_channels) != (val.num_classes, val.in_channels):
        raise TrainingError(f"train and val splits of {data.root} disagree: "
                            f"{train.num_classes} vs {val.num_classes} classes, "
                            f"{train.in_channels} vs {val.in_channels} channels")
    return train, val, summary.class_pixels


def _collate(batch):
    shapes = {tuple(b["image"].shape) for b in batch}
    if len(shapes) > 1:
        names = ", ".join(b["name"] for b in batch)
        raise TrainingError(f"images of one batch differ in size {sorted(shapes)} ({names}); "
                            f"add a crop to the augmentation or train with batch size 1",
                            fixes=["aug=scale_crop", "trainer.batch_size=1 trainer.val_batch_size=1"])
    return {"image": torch.stack([b["image"] for b in batch]),
            "mask": torch.stack([b["mask"] for b in batch]),
            "name": [b["name"] for b in batch]}


# ------------------------------------------------------------------------- evaluate
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


# ------------------------------------------------------------------------ networks
@dataclasses.dataclass
class Networks:
    spec: dict                  # the recipe stored in checkpoints
    model: torch.nn.Module      # the classifier: the parameters every net below shares
    patch_size: tuple | None
    train_net: torch.nn.Module  # dense at the output stride | the classifier (patch method)
    eval_net: torch.nn.Module   # dense at stride 1
    stride: int
    has_bn: bool
    channels_last: bool


def build_networks(settings: TrainSettings, num_classes, in_channels, device="cpu") -> Networks:
    """The model and the nets a run trains and evaluates, with the settings that follow
    the model resolved: an already dense network (smp) trains at its native resolution,
    a patch classifier densely at output stride 2 (auto) or as it is told. Raises
    SettingsError for a combination that cannot run; reads no data (so it is also the
    check of a configuration)."""
    s, t = settings, settings.trainer
    spec = model_spec(dataclasses.asdict(s.model), num_classes, in_channels)
    model = build_model(spec).to(device)
    ps = getattr(model, "patch_size", None)
    patch_size = tuple(ps) if ps is not None else None
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and patch_size is not None:
        # batch statistics mix the positions of a whole image, which one patch cannot
        # see: patch classifiers train with running statistics (densify requires it)
        fcnseg.freeze_batchnorm(model)
    pad = {"pad_mode": s.model.pad_mode, "pad_value": s.model.pad_value}
    if patch_size is None and t.method == "patch":
        raise SettingsError("trainer.method", f"model {s.model.name} is already a dense network "
                            f"(no patch size); train it with method dense", ("dense",))
    stride = resolve_output_stride(t, patch_size is not None)
    # auto = on: NHWC is faster for the dilated pools and convs on GPU and also on CPU
    channels_last = True if t.channels_last == "auto" else bool(t.channels_last)
    if patch_size is None:
        train_net = eval_net = model
    else:
        # one dense net for evaluation (stride 1, every pixel) and, for dense training,
        # one at the output stride; both run on the classifier's own parameters
        eval_net = fcnseg.densify(model, patch_size, **pad)
        train_net = model
        if t.method == "dense":
            from fcnseg.convert.errors import OutputStrideError
            try:
                train_net = fcnseg.densify(model, patch_size, output_stride=stride, **pad)
            except OutputStrideError as e:
                if t.output_stride != "auto":
                    raise SettingsError("trainer.output_stride", str(e)) from None
                stride, train_net = 1, eval_net  # auto, and this net cannot skip rows
    if channels_last and train_net is model:
        model.to(memory_format=torch.channels_last)
    return Networks(spec, model, patch_size, train_net, eval_net, stride, has_bn, channels_last)


# ---------------------------------------------------------------------------- run
class Trainer(TrainingRun):
    def __init__(self, settings: TrainSettings, run_dir: Path, env):
        super().__init__(settings, run_dir, env)
        t = self.t
        self.train_ds, self.val_ds, class_pixels = _datasets(settings.data, settings.aug)
        ds = self.train_ds
        self.num_classes, self.in_channels = ds.num_classes, ds.in_channels
        self.ignore_index = getattr(ds, "ignore_index", 255)
        self.method = t.method
        self._build_nets()
        self._build_loaders()
        self.plan = StepPlan.from_settings(t, self.steps_per_epoch)
        auto_weights = self._build_optimisation(class_pixels)
        if auto_weights is not None:
            self.log("class weights: " + " ".join(f"{w:.2f}" for w in auto_weights))
        self.first_step_logged = False
        if settings.resume:
            self._resume(settings.resume)
        self.step_cost = self._check_cost()

    # ------------------------------------------------------------------ networks
    def _build_nets(self):
        nets = build_networks(self.s, self.num_classes, self.in_channels, self.env.device)
        self.spec, self.model, self.patch_size = nets.spec, nets.model, nets.patch_size
        self.train_net, self.eval_net, self.stride = nets.train_net, nets.eval_net, nets.stride
        self.has_bn, self.channels_last = nets.has_bn, nets.channels_last
        self.pad = {"pad_mode": self.s.model.pad_mode, "pad_value": self.s.model.pad_value}
        self.step_net = self.train_net
        d = self.env
        if d.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.step_net = DDP(self.train_net,
                                device_ids=[d.device.index] if d.device.type == "cuda" else None)

    def _build_loaders(self):
        t, d = self.t, self.env
        if d.enabled:
            self.sampler = torch.utils.data.DistributedSampler(
                self.train_ds, d.world_size, d.rank, shuffle=True, seed=t.seed)
            val_sampler = runtime.ShardSampler(len(self.val_ds), d.rank, d.world_size)
        else:
            self.sampler = torch.utils.data.RandomSampler(self.train_ds, generator=self.gen)
            val_sampler = None
        pin = d.device.type == "cuda"
        self.train_loader = torch.utils.data.DataLoader(
            self.train_ds, t.batch_size, sampler=self.sampler, num_workers=t.num_workers,
            collate_fn=_collate, generator=self.gen, worker_init_fn=_worker_init,
            pin_memory=pin, persistent_workers=False)
        self.val_loader = torch.utils.data.DataLoader(
            self.val_ds, t.val_batch_size, sampler=val_sampler, shuffle=False,
            num_workers=t.num_workers, collate_fn=_collate, pin_memory=pin)
        self.steps_per_epoch = len(self.train_loader)

    # ------------------------------------------------------------------ cost
    def _batch_shape(self):
        c, h, w = self.train_ds[0]["image"].shape
        return (min(self.t.batch_size, len(self.train_ds)), c, h, w)

    def _cost_of(self, train_net, model, shape, stride):
        n, c, h, w = shape
        x = torch.empty(shape, device=self.env.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        detail = f"{n} images of {h}x{w}, {self.method}"
        if self.method == "dense":
            if self.patch_size is not None:
                detail += f", output stride {stride}"
            return cost.dense_step_cost(train_net, model, x, self.s.optim.name,
                                        self.env.device, detail)
        patch = torch.empty(1, c, *self.patch_size, device=self.env.device)
        grid = math.ceil(h / stride) * math.ceil(w / stride)
        per_step = max(1, round(n * grid * self.t.sample_fraction))
        flops, per_patch = cost.patch_cost(model, patch, self.env.device)
        self.patch_chunk = cost.patch_chunk(per_patch, self.t.patch_memory_mb, self.env.device)
        return cost.patch_step_cost(model, patch, per_step, self.patch_chunk, self.s.optim.name,
                                    self.env.device, detail + f", up to {per_step} patches in "
                                    f"micro-batches of {self.patch_chunk}")

    def _check_cost(self):
        shape = self._batch_shape()
        c = self._cost_of(self.train_net, self.model, shape, self.stride)
        self.log(c.summary())
        limit = self.t.memory_limit_mb
        limit = 0.9 * cost.free_memory_bytes(self.env.device) if limit == "auto" else limit * cost.MIB
        if c.memory_bytes > limit:
            fixes = self._fits(shape, c, limit)
            raise TrainingError(
                f"one training step needs about {c.memory_bytes / cost.MIB:.0f} MiB "
                f"({c.summary()}), more than the {limit / cost.MIB:.0f} MiB available on "
                f"{self.env.device}. Settings estimated to fit: "
                f"{'; '.join(fixes) if fixes else 'none found, use a smaller network'}",
                fixes=fixes)
        if self.env.device.type == "cpu" and c.seconds > 60:
            self.log(f"warning: one step is expected to take {cost._duration(c.seconds)} on this "
                     f"CPU, the run ({self.plan.total_steps} steps) about "
                     f"{cost._duration(c.seconds * self.plan.total_steps)}; a GPU "
                     f"(trainer.device=cuda), a larger output stride, a smaller batch or a "
                     f"narrower network (model.kwargs.width_mult) is faster")
        return c

    def _fits(self, shape, c, limit):
        """Settings that bring the step under `limit` bytes, cheapest change first."""
        out = []
        per_image = c.activation_bytes / shape[0]
        for b in (shape[0] // 2, shape[0] // 4, 1):
            if b >= 1 and per_image * b + c.state_bytes <= limit:
                out.append(f"trainer.batch_size={b}")
                break
        if self.method == "dense" and self.patch_size is not None:
            from fcnseg.convert.errors import OutputStrideError
            for s in (self.stride * 2, self.stride * 4, self.stride * 8):
                try:
                    net = fcnseg.densify(self.model, self.patch_size, output_stride=s, **self.pad)
                except OutputStrideError:
                    continue
                if self._cost_of(net, self.model, shape, s).memory_bytes <= limit:
                    out.append(f"trainer.output_stride={s}")
                    break
            if self.s.model.builder == "zoo":
                width = float(self.s.model.kwargs.get("width_mult", 1.0))
                for f in (0.5, 0.25):
                    mcfg = dataclasses.asdict(self.s.model)
                    mcfg["kwargs"] = dict(mcfg["kwargs"], width_mult=width * f)
                    try:
                        m = build_model(model_spec(mcfg, self.num_classes, self.in_channels))
                        fcnseg.freeze_batchnorm(m)
                        net = fcnseg.densify(m, m.patch_size, output_stride=self.stride, **self.pad)
                    except Exception:  # noqa: BLE001  a width the family cannot build
                        continue
                    if self._cost_of(net, m, shape, self.stride).memory_bytes <= limit:
                        out.append(f"model.kwargs.width_mult={width * f:g}")
                        break
        return out

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_meta(self):
        ds = self.train_ds
        return dict(
            patch_size=list(self.patch_size) if self.patch_size else None, **self.pad,
            in_channels=self.in_channels, num_classes=self.num_classes,
            class_names=[str(c) for c in ds.class_names],
            palette=[[int(v) for v in row] for row in ds.palette],
            mean=[float(v) for v in ds.mean], std=[float(v) for v in ds.std],
            ignore_index=self.ignore_index, method=self.method, output_stride=self.stride)

    def _check_resumable(self, path, ck):
        if ck["model"] != self.spec:
            raise TrainingError(f"resume: {path} holds model {ck['model']} but the settings "
                                f"build {self.spec}; resume with the same model and data")
        if ck.get("total_steps", self.plan.total_steps) != self.plan.total_steps:
            self.log(f"resume: the step budget changed from {ck['total_steps']} to "
                     f"{self.plan.total_steps}; the schedule follows the new one")

    # ------------------------------------------------------------------- training
    def _train_mode(self):
        self.train_net.train()
        self.model.train()
        if self.has_bn and self.patch_size is not None:  # see build_networks
            fcnseg.freeze_batchnorm(self.model)

    def _run_step(self, batch, epoch, i):
        x, y = self._inputs(batch)
        ts = time.perf_counter()
        loss = self.train_step(x, y, epoch, i)
        if loss is None:  # nothing learnt, but the step counts (the schedule stays in step)
            with self.stop.lock:
                self.scheduler.step()
                self.step += 1
        if not self.first_step_logged:
            self.first_step_logged = True
            self.log(f"\nfirst step: {time.perf_counter() - ts:.2f} s (estimated "
                     f"{self.step_cost.seconds:.2f} s)")
        self.bar.update(1)
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
        return loss

    def train_step(self, x, y, epoch, i):
        """One optimiser step on batch (x, y) -> the loss (float) or None when the batch
        has no labelled pixel. Weights change only inside the stop lock, at the end."""
        d, t = self.env, self.t
        g = torch.Generator().manual_seed(_epoch_seed(t.seed, epoch) * 10_007 + i
                                          + 1_000_003 * d.rank)
        pixels = sample_pixels(y, t.sample_fraction, t.balance_classes, self.stride,
                               self.ignore_index, g)
        target = gather_targets(y, pixels)
        if target.numel() == 0:  # an all-ignore batch teaches nothing
            return None
        self.optimizer.zero_grad(set_to_none=True)
        autocast = lambda: runtime.autocast(d.device, self.amp_dtype)  # noqa: E731
        where = f" (epoch {epoch + 1}, batch {i + 1})"
        if self.method == "dense":
            with autocast():
                logits = dense_logits(self.step_net, x, pixels, self.stride)
            loss = self.loss_fn(full_precision(logits), target)
            self._check_finite(loss, where)
            self.scaler.scale(loss).backward()
        else:
            loss = patch_backward(self.step_net, x, pixels, self.patch_size,
                                  lambda lg: self.scaler.scale(self.loss_fn(lg, target)),
                                  chunk=self.patch_chunk, autocast=autocast, **self.pad)
            loss = loss / self.scaler.get_scale() if self.scaler.is_enabled() else loss
            self._check_finite(loss, where)
        self._commit_step()
        return loss.item()

    def _train(self):
        self.bar = tqdm(total=self.plan.total_steps, initial=self.step, disable=not self.env.main,
                        desc=f"train [{self.method}]", dynamic_ncols=True, leave=True)
        try:
            return super()._train()
        finally:
            self.bar.close()  # also when a step raised (a diverged loss)

    def _before_steps(self):
        """A run stopped during a validation does that validation first: its last.pt is of
        the step whose validation did not finish."""
        if self.step and self.plan.evaluates_after(self.step) and \
                (not self.history or self.history[-1]["step"] != self.step):
            return self._evaluate([], 0.0)
        return True

    def _finish(self):
        self.bar.close()  # before the final report's table
        return super()._finish()

    def _validate(self, losses, train_time):
        """The history row of a validation after step self.step; None when a stop
        request interrupted it."""
        d = self.env
        t0 = time.perf_counter()
        self.eval_net.eval()
        self.model.eval()
        cm = evaluate(self.eval_net, self.val_loader, self.num_classes, self.ignore_index,
                      d.device, self.amp_dtype, self.channels_last,
                      stop=self.stop if not d.enabled else None)
        if cm is None:
            return None
        metrics = cm.compute()
        mean_loss = runtime.all_reduce_mean(sum(losses) / max(len(losses), 1), d)
        row = {
            "step": self.step, "epoch": round(self.step / self.plan.steps_per_epoch, 3),
            "train_loss": mean_loss, "val_miou": metrics["miou"],
            "val_pixel_acc": metrics["pixel_acc"], "lr": self.scheduler.get_last_lr()[0],
            "method": self.method, "train_time_s": round(train_time, 3),
            "eval_time_s": round(time.perf_counter() - t0, 3), "metrics": metrics}
        self.log(f"\nstep {self.step}/{self.plan.total_steps}: loss {mean_loss:.4f}  val mIoU "
                 f"{metrics['miou']:.4f}  pixel acc {metrics['pixel_acc']:.4f}  train "
                 f"{train_time:.1f}s")
        return row

    def _pictures(self):
        report.plot_curves(self.run_dir / "curves.png", self.history)
        self._grid()

    def _grid(self):
        n = self.t.grid_images
        if n <= 0:
            return
        items = [self.val_ds[i] for i in range(min(n, len(self.val_ds)))]
        preds = []
        with torch.no_grad():
            for it in items:
                x = it["image"][None].to(self.env.device)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with runtime.autocast(self.env.device, self.amp_dtype):
                    preds.append(self.eval_net(x).argmax(1)[0].cpu())
        report.plot_grid(self.run_dir / "val_grid.png", [it["image"] for it in items],
                         [it["mask"] for it in items], preds, self.train_ds.palette,
                         self.train_ds.mean, self.train_ds.std, self.ignore_index)

    def _run_summary(self):
        d = self.env
        return (f"model {self.spec['name']} ({self.spec['builder']}), patch size "
                f"{self.patch_size}, method {self.method}, output stride {self.stride}, device "
                f"{d.device}, amp {self.amp_dtype}, world size {d.world_size}, "
                f"{self.plan.total_steps} steps ({self.plan.epochs:.1f} epochs of "
                f"{self.plan.steps_per_epoch}), validation every {self.plan.eval_every}, "
                f"run dir {self.run_dir}")

    def _final_report(self, metrics):
        if not self.env.main:
            return
        names = [str(c) for c in self.train_ds.class_names]
        self.log(report.iou_table(metrics, names))
        out = dict(metrics, method=self.method, model=self.spec["name"],
                   patch_size=list(self.patch_size) if self.patch_size else None,
                   output_stride=self.stride, best_miou=self.best, steps=self.step,
                   class_names=names, device=str(self.env.device),
                   world_size=self.env.world_size,
                   train_times_s=[h["train_time_s"] for h in self.history],
                   eval_times_s=[h["eval_time_s"] for h in self.history])
        report.write_json(self.run_dir / "metrics.json", out)
        self.log(f"wrote metrics.json, metrics.csv, curves.png, val_grid.png, last.pt, best.pt "
                 f"to {self.run_dir}")
