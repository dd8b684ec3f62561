"""The training run: datasets -> model -> epochs of (train, evaluate, checkpoint) -> report.

`run(cfg, run_dir)` takes plain nested dicts (the groups of conf/train.yaml as produced
by OmegaConf.to_container) so that tools/train.py and the tests share it without the
library importing Hydra.
"""
import math
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import fcnseg
from fcnseg import runtime
from fcnseg.models import build_model, load_checkpoint, model_spec, save_checkpoint
from fcnseg.runtime import rng_state, set_rng_state
from fcnseg.train import report
from fcnseg.train.build import build_optimizer, build_scheduler, build_transform
from fcnseg.train.losses import PixelLoss
from fcnseg.train.metrics import ConfusionMatrix
from fcnseg.train.sampling import gather_targets, sample_pixels
from fcnseg.train.step import sampled_logits


class TrainingError(RuntimeError):
    """A run that cannot go on (diverged loss, unusable settings); the message says why."""


# ----------------------------------------------------------------------------- setup
def _epoch_seed(seed, epoch):
    return seed * 100_003 + epoch


def _datasets(data_cfg, aug_cfg):
    import fcnseg.data
    data_cfg = dict(data_cfg)
    kind, root = data_cfg.pop("kind"), data_cfg.pop("root")
    train_split = data_cfg.pop("train_split", "train")
    val_split = data_cfg.pop("val_split", "val")
    kw = {k: v for k, v in data_cfg.items() if v is not None}
    train = fcnseg.data.build_dataset(kind, root, train_split,
                                      transform=build_transform(aug_cfg), **kw)
    val = fcnseg.data.build_dataset(kind, root, val_split, **kw)
    # clear errors (file + fix) for missing masks, bad labels, size mismatches, empty
    # splits, unreadable images: before the first step, not an hour into the run
    report_ = fcnseg.data.validate_dataset(train)
    fcnseg.data.validate_dataset(val)
    if (train.num_classes, train.in_channels) != (val.num_classes, val.in_channels):
        raise TrainingError(f"train and val splits of {root} disagree: "
                            f"{train.num_classes} vs {val.num_classes} classes, "
                            f"{train.in_channels} vs {val.in_channels} channels")
    return train, val, report_.class_pixels


def auto_class_weights(class_pixels):
    """(median frequency / class frequency) ** 0.5: background-heavy data stops drowning
    the rare classes, without the square-root-free version's overshoot. Absent classes 1."""
    f = torch.as_tensor(class_pixels, dtype=torch.float64)
    f = f / f.sum()
    present = f > 0
    w = torch.ones_like(f)
    w[present] = (f[present].median() / f[present]).sqrt()
    return w.tolist()


def _collate(batch):
    shapes = {tuple(b["image"].shape) for b in batch}
    if len(shapes) > 1:
        names = ", ".join(b["name"] for b in batch)
        raise TrainingError(f"images of one batch differ in size {sorted(shapes)} ({names}); "
                            f"add a crop to the augmentation (e.g. aug=scale_crop) or use "
                            f"trainer.batch_size=1 / trainer.val_batch_size=1")
    return {"image": torch.stack([b["image"] for b in batch]),
            "mask": torch.stack([b["mask"] for b in batch]),
            "name": [b["name"] for b in batch]}


class _StopOnSignal:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and returns.
    A second SIGINT aborts at once."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        import threading
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)

    def requested(self, d):
        flag = self.signum is not None
        if d.enabled:  # every rank must stop at the same step or collectives hang
            t = torch.tensor([int(flag)], device=d.device)
            dist.all_reduce(t)
            flag = bool(t.item())
        return flag


# ------------------------------------------------------------------------- evaluate
@torch.no_grad()
def evaluate(net, loader, num_classes, ignore_index=255, device="cpu", amp_dtype=None,
             channels_last=False):
    """Confusion matrix of net's argmax over the loader, summed over all ranks."""
    device = torch.device(device)
    cm = ConfusionMatrix(num_classes, ignore_index, device=device)
    for batch in loader:
        x = batch["image"].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast(device, amp_dtype):
            pred = net(x).argmax(1)  # (N, H, W)
        cm.update(batch["mask"].to(device), pred)
    return cm.all_reduce()


# ---------------------------------------------------------------------------- run
def run(cfg, run_dir):
    """Train as `cfg` says, writing checkpoints and reports into run_dir.
    Returns the final metrics dict (also on rank > 0)."""
    d = runtime.init_distributed(cfg["trainer"].get("device", "auto"))
    try:
        return _Run(cfg, Path(run_dir), d).fit()
    finally:
        runtime.cleanup_distributed(d)


class _Run:
    def __init__(self, cfg, run_dir, d):
        self.cfg, self.run_dir, self.d = cfg, run_dir, d
        t = self.t = cfg["trainer"]
        self.log = print if d.main else (lambda *a, **k: None)
        runtime.configure_determinism(t.get("deterministic", False), d.device)
        self.seed = int(t.get("seed", 0))
        runtime.seed_all(self.seed)
        run_dir.mkdir(parents=True, exist_ok=True)

        self.train_ds, self.val_ds, class_pixels = _datasets(cfg["data"], cfg.get("aug"))
        ds = self.train_ds
        self.num_classes, self.in_channels = ds.num_classes, ds.in_channels
        self.ignore_index = getattr(ds, "ignore_index", 255)

        mcfg = cfg["model"]
        self.spec = model_spec(mcfg, self.num_classes, self.in_channels)
        model = build_model(self.spec).to(d.device)
        self.model = model
        self.patch_size = getattr(model, "patch_size", None)
        self.has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                          for m in model.modules())
        if self.has_bn and self.patch_size is not None:
            # batch statistics mix the positions of a whole image, which one patch cannot
            # see: patch classifiers train with running statistics (densify requires it)
            fcnseg.freeze_batchnorm(model)
        self.pad = {"pad_mode": mcfg.get("pad_mode", "constant"),
                    "pad_value": float(mcfg.get("pad_value", 0.0))}
        self.mode = t.get("mode", "dense")
        self.stride = int(t.get("output_stride", 1))
        if self.patch_size is None:
            if self.mode != "dense":
                raise TrainingError(f"model {mcfg['name']} is already a dense network (no "
                                    f"patch_size); train it with trainer.mode=dense")
            if self.stride != 1:
                raise TrainingError("trainer.output_stride applies to patch classifiers only; "
                                    "set trainer.output_stride=1")
            self.train_net = self.eval_net = model
        else:
            self.patch_size = tuple(self.patch_size)
            self.eval_net = fcnseg.densify(model, self.patch_size, **self.pad)
            self.train_net = (fcnseg.densify(model, self.patch_size, output_stride=self.stride,
                                             **self.pad)
                              if self.mode == "dense" else model)
        cl = t.get("channels_last", "auto")
        # auto = on: NHWC is faster for the dilated pools and convs on GPU and also on CPU
        # (patchnet fwd+bwd, 16x96x96, 2 cores: 2.3 vs 3.5 CPU-s per batch)
        self.channels_last = True if cl == "auto" else bool(cl)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.step_net = self.train_net
        if d.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.step_net = DDP(self.train_net,
                                device_ids=[d.device.index] if d.device.type == "cuda" else None)

        # data loaders: a generator reseeded every epoch fixes order and worker seeds
        self.gen = torch.Generator()
        bs, nw = int(t.get("batch_size", 8)), int(t.get("num_workers", 0))
        if d.enabled:
            self.sampler = torch.utils.data.DistributedSampler(
                self.train_ds, d.world_size, d.rank, shuffle=True, seed=self.seed)
            val_sampler = runtime.ShardSampler(len(self.val_ds), d.rank, d.world_size)
        else:
            self.sampler = torch.utils.data.RandomSampler(self.train_ds, generator=self.gen)
            val_sampler = None
        pin = d.device.type == "cuda"
        self.train_loader = torch.utils.data.DataLoader(
            self.train_ds, bs, sampler=self.sampler, num_workers=nw, collate_fn=_collate,
            generator=self.gen, worker_init_fn=_worker_init, pin_memory=pin,
            persistent_workers=False)
        self.val_loader = torch.utils.data.DataLoader(
            self.val_ds, int(t.get("val_batch_size", bs)), sampler=val_sampler, shuffle=False,
            num_workers=nw, collate_fn=_collate, pin_memory=pin)
        self.steps_per_epoch = len(self.train_loader)
        limit = t.get("max_train_batches")
        if limit:
            self.steps_per_epoch = min(self.steps_per_epoch, int(limit))
        self.epochs = int(t.get("epochs", 1))

        self.optimizer = build_optimizer(cfg["optim"], model.parameters())
        self.scheduler = build_scheduler(cfg["sched"], self.optimizer,
                                         self.epochs * self.steps_per_epoch, self.steps_per_epoch)
        self.amp_dtype = runtime.amp_dtype(d.device, t.get("amp", "auto"))
        self.scaler = runtime.grad_scaler(d.device, self.amp_dtype)
        lcfg = dict(cfg.get("loss") or {"name": "ce"})
        if lcfg.get("class_weights") == "auto":
            lcfg["class_weights"] = auto_class_weights(class_pixels)
            self.log("class weights: " + " ".join(f"{w:.2f}" for w in lcfg["class_weights"]))
        self.loss_fn = PixelLoss(num_classes=self.num_classes, **lcfg).to(d.device)
        self.start_epoch, self.start_step, self.best, self.history = 0, 0, -1.0, []
        self.resumed_rng = None
        if cfg.get("resume"):
            self._resume(cfg["resume"])

    # ------------------------------------------------------------------ checkpoints
    def _state(self, epoch, step, metrics):
        ds = self.train_ds
        return dict(
            model=self.spec, state_dict=self.model.state_dict(),
            patch_size=list(self.patch_size) if self.patch_size else None, **self.pad,
            in_channels=self.in_channels, num_classes=self.num_classes,
            class_names=[str(c) for c in ds.class_names],
            palette=[[int(v) for v in row] for row in ds.palette],
            mean=[float(v) for v in ds.mean], std=[float(v) for v in ds.std],
            ignore_index=self.ignore_index, mode=self.mode, output_stride=self.stride,
            metrics=metrics, history=self.history, best_miou=self.best,
            epoch=epoch, step=step, optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
            rng=rng_state())

    def _save(self, name, state):
        if self.d.main:
            save_checkpoint(self.run_dir / name, **state)

    def _resume(self, resume):
        path = self.run_dir / "last.pt" if resume is True else Path(resume)
        if not path.is_file():
            raise TrainingError(f"resume: no checkpoint at {path}; pass the directory of the "
                                f"run to continue with hydra.run.dir=<that dir> resume=true, "
                                f"or resume=<path to last.pt>")
        ck = load_checkpoint(path, map_location=self.d.device)
        if ck["model"] != self.spec:
            raise TrainingError(f"resume: {path} holds model {ck['model']} but the config "
                                f"builds {self.spec}; resume with the same model and data")
        self.model.load_state_dict(ck["state_dict"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.start_epoch, self.start_step = ck["epoch"], ck["step"]
        self.best, self.history = ck["best_miou"], list(ck["history"])
        self.resumed_rng = ck["rng"]
        self.log(f"resumed from {path}: epoch {self.start_epoch}, step {self.start_step}")

    # ------------------------------------------------------------------- training
    def _train_epoch(self, epoch, stop):
        d, t = self.d, self.t
        self.train_net.train()
        self.model.train()
        if self.has_bn and self.patch_size is not None:  # see __init__
            fcnseg.freeze_batchnorm(self.model)
        frac = float(t.get("sample_fraction", 1.0))
        balance = bool(t.get("balance_classes", False))
        skip = self.start_step if epoch == self.start_epoch else 0
        total, count, step = 0.0, 0, skip
        bar = tqdm(total=self.steps_per_epoch, initial=skip, disable=not d.main,
                   desc=f"epoch {epoch + 1}/{self.epochs} [{self.mode}]", dynamic_ncols=True,
                   leave=True)
        for i, batch in enumerate(self.train_loader):
            if i >= self.steps_per_epoch:
                break
            if i < skip:  # resumed mid-epoch: same data and augmentation draws as before
                continue
            if i == skip and self.resumed_rng is not None:
                set_rng_state(self.resumed_rng)
                self.resumed_rng = None
            x = batch["image"].to(d.device, non_blocking=True)
            y = batch["mask"].to(d.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch) * 10_007 + i
                                              + 1_000_003 * d.rank)
            pixels = sample_pixels(y, frac, balance, self.stride, self.ignore_index, g)
            target = gather_targets(y, pixels)
            if target.numel() == 0:  # an all-ignore batch teaches nothing
                step = i + 1
                continue
            with runtime.autocast(d.device, self.amp_dtype):
                logits = sampled_logits(self.mode, self.step_net, x, pixels,
                                        patch_size=self.patch_size, stride=self.stride,
                                        **self.pad)
                loss = self.loss_fn(logits.float(), target)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; stopped. "
                    f"The last good checkpoint is {self.run_dir / 'last.pt'}. Lower the "
                    f"learning rate (optim.lr=...), add warmup (sched.warmup_steps=...) "
                    f"or turn off mixed precision (trainer.amp=false)")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            total += loss.item()
            count += 1
            step = i + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if stop.requested(d):
                break
        bar.close()
        mean_loss = runtime.all_reduce_mean(total / max(count, 1), d)
        return mean_loss, step

    def fit(self):
        d = self.d
        self.log(f"model {self.spec['name']} ({self.spec['builder']}), patch size "
                 f"{self.patch_size}, mode {self.mode}, device {d.device}, amp "
                 f"{self.amp_dtype}, world size {d.world_size}, "
                 f"{self.steps_per_epoch} steps/epoch, run dir {self.run_dir}")
        metrics = self.history[-1]["metrics"] if self.history else None
        with _StopOnSignal() as stop:
            for epoch in range(self.start_epoch, self.epochs):
                if isinstance(self.sampler, torch.utils.data.DistributedSampler):
                    self.sampler.set_epoch(epoch)
                es = _epoch_seed(self.seed, epoch)
                self.gen.manual_seed(es)
                runtime.seed_all(es)
                tr = getattr(self.train_ds, "transform", None)
                if tr is not None and hasattr(tr, "set_random_seed"):
                    tr.set_random_seed(es % 2**32)
                t0 = time.perf_counter()
                loss, step = self._train_epoch(epoch, stop)
                train_time = time.perf_counter() - t0
                if step < self.steps_per_epoch:  # stopped by a signal mid-epoch
                    self._save("last.pt", self._state(epoch, step, metrics))
                    self.log(f"stopped by signal {stop.signum}: checkpoint at "
                             f"{self.run_dir / 'last.pt'} (epoch {epoch + 1}, step {step}); "
                             f"continue with hydra.run.dir={self.run_dir} resume=true")
                    return {"interrupted": True, "epoch": epoch, "step": step}
                self.eval_net.eval()
                self.model.eval()
                cm = evaluate(self.eval_net, self.val_loader, self.num_classes,
                              self.ignore_index, d.device, self.amp_dtype, self.channels_last)
                metrics = cm.compute()
                self.history.append({
                    "epoch": epoch + 1, "train_loss": loss, "val_miou": metrics["miou"],
                    "val_pixel_acc": metrics["pixel_acc"],
                    "lr": self.scheduler.get_last_lr()[0], "mode": self.mode,
                    "train_time_s": round(train_time, 3),
                    "epoch_time_s": round(time.perf_counter() - t0, 3), "metrics": metrics})
                self.log(f"epoch {epoch + 1}: loss {loss:.4f}  val mIoU {metrics['miou']:.4f}  "
                         f"pixel acc {metrics['pixel_acc']:.4f}  train {train_time:.1f}s")
                improved = not math.isnan(metrics["miou"]) and metrics["miou"] > self.best
                if improved:
                    self.best = metrics["miou"]
                state = self._state(epoch + 1, 0, metrics)
                self._save("last.pt", state)
                if improved:
                    self._save("best.pt", state)
                if d.main:
                    report.write_csv(self.run_dir / "metrics.csv",
                                     [{k: v for k, v in h.items() if k != "metrics"}
                                      for h in self.history])
                if stop.requested(d):
                    self.log(f"stopped by signal {stop.signum} after epoch {epoch + 1}; "
                             f"continue with hydra.run.dir={self.run_dir} resume=true")
                    return {"interrupted": True, "epoch": epoch + 1, "step": 0}
        if metrics is None:
            raise TrainingError("no epoch was run (trainer.epochs must be > 0, or the run "
                                "being resumed has already finished)")
        self._final_report(metrics)
        return metrics

    def _final_report(self, metrics):
        if not self.d.main:
            return
        names = [str(c) for c in self.train_ds.class_names]
        self.log(report.iou_table(metrics, names))
        out = dict(metrics, mode=self.mode, model=self.spec["name"],
                   patch_size=list(self.patch_size) if self.patch_size else None,
                   best_miou=self.best, epochs=len(self.history),
                   class_names=names, device=str(self.d.device), world_size=self.d.world_size,
                   epoch_times_s=[h["epoch_time_s"] for h in self.history],
                   train_times_s=[h["train_time_s"] for h in self.history])
        report.write_json(self.run_dir / "metrics.json", out)
        report.plot_curves(self.run_dir / "curves.png", self.history)
        n = int(self.t.get("grid_images", 4))
        if n > 0:
            items = [self.val_ds[i] for i in range(min(n, len(self.val_ds)))]
            with torch.no_grad():
                preds = []
                for it in items:
                    x = it["image"][None].to(self.d.device)
                    if self.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with runtime.autocast(self.d.device, self.amp_dtype):
                        preds.append(self.eval_net(x).argmax(1)[0].cpu())
            report.plot_grid(self.run_dir / "val_grid.png", [it["image"] for it in items],
                             [it["mask"] for it in items], preds, self.train_ds.palette,
                             self.train_ds.mean, self.train_ds.std, self.ignore_index)
        self.log(f"wrote metrics.json, metrics.csv, curves.png, val_grid.png, last.pt, best.pt "
                 f"to {self.run_dir}")


def _worker_init(worker_id):
    """Each worker gets its own augmentation stream (copies would repeat the same draws)."""
    info = torch.utils.data.get_worker_info()
    tr = getattr(info.dataset, "transform", None)
    if tr is not None and hasattr(tr, "set_random_seed"):
        tr.set_random_seed(torch.initial_seed() % 2**32)
