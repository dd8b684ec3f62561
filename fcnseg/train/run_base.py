"""What every training run does around its steps, written once for the dense/patch
trainer (trainer.Trainer) and the classifier trainer on labelled patches
(classify._ClassifierRun).

A run counts optimiser steps (schedule.StepPlan), validates and checkpoints every
`eval_every` steps, stops on SIGTERM/SIGINT at the next step boundary (signals.py; a
command line run abandons a step still busy after the grace period and exits with
128 + the signal) and resumes from last.pt to the weights of an uninterrupted run: the
batch order, the augmentation and the random state depend only on the seed, the epoch
and the step.

A subclass builds its data, model and loaders, then calls _build_optimisation and
_resume, and fills in the hooks: _run_step (one optimiser step), _validate (the history
row of a validation), _pictures, _checkpoint_meta, _check_resumable, _run_summary,
_final_report, and _train_mode / _before_steps where it needs more than the defaults.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch

from fcnseg import runtime
from fcnseg.checkpoint import load_checkpoint, save_checkpoint
from fcnseg.train import report
from fcnseg.train.losses import PixelLoss, auto_class_weights
from fcnseg.train.schedule import build_optimizer, build_scheduler
from fcnseg.train.signals import StopRequest, run_stoppable


class TrainingError(RuntimeError):
    """A run that cannot go on (diverged loss, a step that cannot fit, a missing checkpoint).

    fixes: settings assignments that would make it work ("trainer.output_stride=4"), by the
    settings' dotted names; continue_in: the run directory whose last.pt resumes the run.
    A command line front end turns both into its own syntax."""

    def __init__(self, message, fixes=(), continue_in=None):
        super().__init__(message)
        self.fixes, self.continue_in = list(fixes), continue_in


def _epoch_seed(seed, epoch):
    return seed * 100_003 + epoch


def _seed_transform(dataset, seed):
    tr = getattr(dataset, "transform", None)
    if tr is not None and hasattr(tr, "set_random_seed"):
        tr.set_random_seed(seed % 2**32)


def _worker_init(worker_id):
    """Each worker gets its own augmentation stream (copies would repeat the same draws)."""
    _seed_transform(torch.utils.data.get_worker_info().dataset, torch.initial_seed())


class TrainingRun:
    """The skeleton of a run. A subclass sets train_ds, val_ds, model, spec, plan and
    train_loader (whose sampler draws from self.gen) before _build_optimisation."""

    SCORE = "miou"  # the validation metric whose best value best.pt keeps

    def __init__(self, settings, run_dir: Path, env):
        self.s, self.run_dir, self.env = settings, run_dir, env
        t = self.t = settings.trainer
        self.log = print if env.main else (lambda *a, **k: None)
        runtime.configure_determinism(t.deterministic, env.device)
        runtime.seed_all(t.seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.gen = torch.Generator()  # reseeded every epoch: it fixes batch order and worker seeds
        self.step, self.best, self.history = 0, -1.0, []
        self.resumed_rng, self.safe_rng = None, None
        self.stop = StopRequest()

    @property
    def _best_key(self):
        return f"best_{self.SCORE}"

    def _build_optimisation(self, class_pixels):
        """Optimiser, schedule, mixed precision and loss of self.model over self.plan.
        Returns the class weights that class_weights=auto computed from class_pixels
        (the training split's pixels or patches per class), else None."""
        s, device = self.s, self.env.device
        self.optimizer = build_optimizer(s.optim, self.model.parameters())
        self.scheduler = build_scheduler(s.sched, self.optimizer, self.plan.total_steps)
        self.amp_dtype = runtime.amp_dtype(device, s.trainer.amp)
        self.scaler = runtime.grad_scaler(device, self.amp_dtype)
        loss = dataclasses.asdict(s.loss)
        auto_weights = None
        if loss.get("class_weights") == "auto":
            loss["class_weights"] = auto_weights = auto_class_weights(class_pixels)
        self.loss_fn = PixelLoss(num_classes=self.train_ds.num_classes, **loss).to(device)
        return auto_weights

    # ------------------------------------------------------------------ checkpoints
    def _state(self, metrics, rng=None):
        return dict(
            model=self.spec, state_dict=self.model.state_dict(), **self._checkpoint_meta(),
            metrics=metrics, history=self.history, **{self._best_key: self.best},
            step=self.step, epoch=self.step // self.plan.steps_per_epoch,
            total_steps=self.plan.total_steps, optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
            rng=rng if rng is not None else runtime.rng_state())

    def _save(self, name, state):
        if self.env.main:
            save_checkpoint(self.run_dir / name, **state)

    def _resume(self, resume):
        path = self.run_dir / "last.pt" if resume is True else Path(resume)
        if not path.is_file():
            raise TrainingError(f"resume: no checkpoint at {path}; resume the run directory "
                                f"that holds its last.pt, or give the checkpoint's path as resume",
                                continue_in=self.run_dir)
        ck = load_checkpoint(path, map_location=self.env.device)
        self._check_resumable(path, ck)
        self.model.load_state_dict(ck["state_dict"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.step, self.best, self.history = ck["step"], ck[self._best_key], list(ck["history"])
        self.resumed_rng = ck["rng"]
        self.log(f"resumed from {path}: step {self.step} of {self.plan.total_steps}")

    def _abandon(self):
        """The stop path of signals.run_stoppable: checkpoint of the last completed step."""
        metrics = self.history[-1]["metrics"] if self.history else None
        self._save("last.pt", self._state(metrics, self.safe_rng))
        self.log(f"\nabandoned the step in progress; checkpoint of step {self.step} at "
                 f"{self.run_dir / 'last.pt'}", flush=True)

    def _interrupted(self):
        metrics = self.history[-1]["metrics"] if self.history else None
        with self.stop.lock:
            self._save("last.pt", self._state(metrics, self.safe_rng))
        self.log(f"stopped by signal {self.stop.signum}: checkpoint at "
                 f"{self.run_dir / 'last.pt'} (step {self.step} of {self.plan.total_steps})")
        return {"interrupted": True, "step": self.step, "run_dir": str(self.run_dir),
                "signal": self.stop.signum}

    # --------------------------------------------------------------------- training
    def fit(self, exit_on_signal=False):
        self.log(self._run_summary())
        self.stop.hard_exit = exit_on_signal
        installed = self.stop.install()
        # one block for the whole run: every step's maps and gradients reuse the pages of the
        # step before (fcnseg.runtime.reuse_freed_memory)
        try:
            with runtime.reuse_host_memory(self.env.device):
                # ranks stop together at a step boundary (_stop_requested); one rank that
                # abandoned its step would leave the others waiting in a collective
                if installed and exit_on_signal and not self.env.enabled:
                    return run_stoppable(self._train, self.stop, self._abandon)
                return self._train()
        finally:
            self.stop.restore()

    def _start_epoch(self, epoch):
        """An epoch's batch order and augmentation depend on the seed and the epoch only,
        so a resumed run sees the same batches as an uninterrupted one."""
        sampler = self.train_loader.sampler
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            sampler.set_epoch(epoch)
        es = _epoch_seed(self.t.seed, epoch)
        self.gen.manual_seed(es)
        runtime.seed_all(es)
        _seed_transform(self.train_ds, es)
        self._train_mode()

    def _train_mode(self):
        self.model.train()

    def _stop_requested(self):
        flag = self.stop.requested
        if self.env.enabled:  # every rank must stop at the same step or collectives hang
            import torch.distributed as dist
            f = torch.tensor([int(flag)], device=self.env.device)
            dist.all_reduce(f)
            flag = bool(f.item())
        return flag

    def _inputs(self, batch):
        """The batch's images and labels on the run's device, images in its memory format."""
        device = self.env.device
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _commit_step(self):
        """The optimiser's update and the step count, together under the stop lock: an
        abandoned step leaves the weights and the count of the last completed one."""
        with self.stop.lock:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            self.safe_rng = None

    def _check_finite(self, loss, where=""):
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {loss.item()} at step {self.step + 1}{where}; stopped. The last "
                f"good checkpoint is {self.run_dir / 'last.pt'}. Lower the learning rate, add "
                f"warmup or turn off mixed precision",
                fixes=[f"optim.lr={self.s.optim.lr / 10:g}", "sched.warmup_steps=100",
                       "trainer.amp=false"])

    def _before_steps(self):
        """What a resumed run does before its next step; False when a stop request
        interrupted it."""
        return True

    def _train(self):
        plan = self.plan
        losses, t0 = [], time.perf_counter()
        if not self._before_steps():
            return self._interrupted()
        while self.step < plan.total_steps:
            epoch, first = plan.position(self.step)
            self._start_epoch(epoch)
            for i, batch in enumerate(self.train_loader):
                if i >= plan.steps_per_epoch or self.step >= plan.total_steps:
                    break
                if i < first:  # resumed mid-epoch: same data and augmentation draws as before
                    continue
                if self.resumed_rng is not None:
                    runtime.set_rng_state(self.resumed_rng)
                    self.resumed_rng = None
                if self._stop_requested():
                    return self._interrupted()
                with self.stop.lock:
                    self.safe_rng = runtime.rng_state()  # what the abandon path resumes from
                loss = self._run_step(batch, epoch, i)
                if loss is not None:
                    losses.append(loss)
                if plan.evaluates_after(self.step):
                    if not self._evaluate(losses, time.perf_counter() - t0):
                        return self._interrupted()
                    losses, t0 = [], time.perf_counter()
                    self._train_mode()
        return self._finish()

    def _evaluate(self, losses, train_time):
        """Validation, checkpoints, metrics.csv and pictures after step self.step; False
        when a stop request interrupted the validation."""
        row = self._validate(losses, train_time)
        if row is None:
            return False
        self.history.append(row)
        metrics = row["metrics"]
        improved = not math.isnan(metrics[self.SCORE]) and metrics[self.SCORE] > self.best
        if improved:
            self.best = metrics[self.SCORE]
        with self.stop.lock:
            state = self._state(metrics)
            self._save("last.pt", state)
            if improved:
                self._save("best.pt", state)
            if self.env.main:
                report.write_csv(self.run_dir / "metrics.csv",
                                 [{k: v for k, v in h.items() if k != "metrics"}
                                  for h in self.history])
                self._pictures()
        return True

    def _finish(self):
        if not self.history:
            raise TrainingError("no step was run (the run being resumed has already finished)")
        metrics = self.history[-1]["metrics"]
        self._final_report(metrics)
        return metrics
