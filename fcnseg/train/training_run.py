"""What every training run does around its task's steps.

A run counts optimiser steps (schedule.StepPlan), validates and checkpoints every
`eval_every` steps, stops on SIGTERM/SIGINT at the next step boundary (signals.py; a
command line run abandons a step still busy after the grace period and exits with
128 + the signal) and resumes from last.pt to the weights of an uninterrupted run: the
batch order, the augmentation and the random state depend only on the seed, the epoch
and the step. What depends on the kind of data (datasets, model, one step, a
validation, the report) is the task's (task.Task).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from fcnseg import runtime
from fcnseg.checkpoint import load_checkpoint, save_checkpoint
from fcnseg.train import report
from fcnseg.train.errors import TrainingError
from fcnseg.train.loaders import epoch_seed, seed_transform
from fcnseg.train.losses import PixelLoss, auto_class_weights
from fcnseg.train.schedule import StepPlan, build_optimizer, build_scheduler
from fcnseg.train.signals import StopRequest, run_stoppable
from fcnseg.train.task import check_task

logger = logging.getLogger(__name__)


class TrainingRun:
    """One run of `task_class` (a task.Task) as `settings` (TrainSettings) say, writing into
    run_dir; env: the process's runtime.DistEnv."""

    def __init__(self, task_class, settings, run_dir: Path, env):
        self.settings, self.run_dir, self.env = settings, run_dir, env
        self.trainer = trainer = settings.trainer
        task_class.check_environment(env)
        runtime.configure_determinism(trainer.deterministic, env.device)
        runtime.seed_all(trainer.seed)
        if settings.logger == "tensorboard" and env.main:
            report.TensorBoardLog.writer_class()  # a missing extra stops the run before the data scan
        run_dir.mkdir(parents=True, exist_ok=True)
        self.gen = torch.Generator()  # reseeded every epoch: it fixes batch order and worker seeds
        self.step, self.best, self.history = 0, -1.0, []
        self.resumed_rng, self.safe_rng = None, None
        self.stop = StopRequest()
        self.task = check_task(task_class(settings, env, self.gen))
        self.plan = StepPlan.from_settings(trainer, len(self.task.train_loader))
        auto_weights = self._build_optimisation(self.task.class_counts)
        if auto_weights is not None:
            logger.info("class weights: " + " ".join(f"{w:.2f}" for w in auto_weights))
        if settings.resume:
            self._resume(settings.resume)
        self.step_cost = self.task.estimate_step(self)
        self.first_step_logged = False
        self.scalars = self.tensorboard = None  # the step logs, opened by _train on rank 0

    @property
    def _best_key(self):
        return f"best_{self.task.SCORE}"

    def _build_optimisation(self, class_counts):
        """Optimiser, schedule, mixed precision and loss of the task's model over self.plan.
        Returns the class weights that class_weights=auto computed from class_counts
        (the training split's pixels or patches per class), else None."""
        s, device = self.settings, self.env.device
        self.optimizer = build_optimizer(s.optim, self.task.model.parameters())
        self.scheduler = build_scheduler(s.sched, self.optimizer, self.plan.total_steps)
        self.precision = runtime.resolve_precision(s.trainer.precision, device)
        self.amp_dtype = self.precision.autocast_dtype      # autocast around the forward passes
        self.scaler = runtime.grad_scaler(device, self.amp_dtype)
        loss = dataclasses.asdict(s.loss)
        auto_weights = None
        if loss.get("class_weights") == "auto":
            loss["class_weights"] = auto_weights = auto_class_weights(class_counts)
        self.loss_fn = PixelLoss(num_classes=self.task.train_ds.num_classes, **loss).to(device)
        return auto_weights

    # ------------------------------------------------------------------ checkpoints
    def _state(self, metrics, rng=None):
        task = self.task
        return dict(
            model=task.spec, state_dict=task.model.state_dict(), **task.checkpoint_meta(),
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
        self.task.check_resumable(self, path, ck)
        self.task.model.load_state_dict(ck["state_dict"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.step, self.best, self.history = ck["step"], ck[self._best_key], list(ck["history"])
        self.resumed_rng = ck["rng"]
        logger.info(f"resumed from {path}: step {self.step} of {self.plan.total_steps}")

    def _abandon(self):
        """The stop path of signals.run_stoppable: checkpoint of the last completed step."""
        metrics = self.history[-1]["metrics"] if self.history else None
        self._save("last.pt", self._state(metrics, self.safe_rng))
        logger.warning(f"abandoned the step in progress; checkpoint of step {self.step} at "
                       f"{self.run_dir / 'last.pt'}")

    def _interrupted(self):
        metrics = self.history[-1]["metrics"] if self.history else None
        with self.stop.lock:
            self._save("last.pt", self._state(metrics, self.safe_rng))
        logger.warning(f"stopped by signal {self.stop.signum}: checkpoint at "
                       f"{self.run_dir / 'last.pt'} (step {self.step} of {self.plan.total_steps})")
        return {"interrupted": True, "step": self.step, "run_dir": str(self.run_dir),
                "signal": self.stop.signum}

    # --------------------------------------------------------------------- training
    def fit(self, exit_on_signal=False):
        logger.info(self.task.summary(self))
        self.stop.hard_exit = exit_on_signal
        installed = self.stop.install()
        # one block for the whole run: every step's maps and gradients reuse the pages of the
        # step before (fcnseg.runtime.reuse_freed_memory)
        try:
            # the float32 math of the precision setting (IEEE, or TF32) for every step
            with runtime.reuse_host_memory(self.env.device), runtime.float32_math(self.precision):
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
        sampler = self.task.train_loader.sampler
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            sampler.set_epoch(epoch)
        seed = epoch_seed(self.trainer.seed, epoch)
        self.gen.manual_seed(seed)
        runtime.seed_all(seed)
        seed_transform(self.task.train_ds, seed)
        self.task.train_mode()

    def _stop_requested(self):
        flag = self.stop.requested
        if self.env.enabled:  # every rank must stop at the same step or collectives hang
            import torch.distributed as dist
            f = torch.tensor([int(flag)], device=self.env.device)
            dist.all_reduce(f)
            flag = bool(f.item())
        return flag

    def inputs(self, batch):
        """The batch's images and labels on the run's device, images in its memory format."""
        device = self.env.device
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        if self.task.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def commit_step(self):
        """The optimiser's update and the step count, together under the stop lock: an
        abandoned step leaves the weights and the count of the last completed one."""
        with self.stop.lock:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            self.safe_rng = None

    def check_finite(self, loss, where=""):
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {loss.item()} at step {self.step + 1}{where}; stopped. The last "
                f"good checkpoint is {self.run_dir / 'last.pt'}. Lower the learning rate, add "
                f"warmup or turn off mixed precision",
                fixes=[f"optim.lr={self.settings.optim.lr / 10:g}", "sched.warmup_steps=100",
                       "trainer.precision=fp32"])

    def _train(self):
        # per-step scalars in steps.csv (a resumed run keeps the rows up to its step)
        self.scalars = report.ScalarLog(self.run_dir / "steps.csv", keep_until=self.step) \
            if self.env.main else None
        self.tensorboard = report.TensorBoardLog(self.run_dir, resume_step=self.step) \
            if self.env.main and self.settings.logger == "tensorboard" else None
        self.bar = tqdm(total=self.plan.total_steps, initial=self.step, disable=not self.env.main,
                        desc=f"train [{self.task.method}]", dynamic_ncols=True, leave=True)
        try:
            with logging_redirect_tqdm():  # log lines above the bar, not through it
                return self._steps()
        finally:
            self.bar.close()  # also when a step raised (a diverged loss)
            if self.tensorboard is not None:
                self.tensorboard.close()

    def _steps(self):
        plan = self.plan
        losses, t0 = [], time.perf_counter()
        if not self.task.before_steps(self):
            return self._interrupted()
        while self.step < plan.total_steps:
            epoch, first = plan.position(self.step)
            self._start_epoch(epoch)
            for i, batch in enumerate(self.task.train_loader):
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
                    if not self.validate(losses, time.perf_counter() - t0):
                        return self._interrupted()
                    losses, t0 = [], time.perf_counter()
                    self.task.train_mode()
        return self._finish()

    def _run_step(self, batch, epoch, i):
        started = time.perf_counter()
        loss = self.task.step(self, batch, epoch, i)
        if loss is None:  # nothing learnt, but the step counts (the schedule stays in step)
            with self.stop.lock:
                self.scheduler.step()
                self.step += 1
        if self.step_cost is not None and not self.first_step_logged:
            self.first_step_logged = True
            logger.info(f"first step: {time.perf_counter() - started:.2f} s (estimated "
                        f"{self.step_cost.seconds:.2f} s)")
        seconds = time.perf_counter() - started
        if self.scalars is not None:
            images = len(batch["image"]) * self.env.world_size
            row = dict(step=self.step, epoch=epoch, loss=loss, lr=self.scheduler.get_last_lr()[0],
                       seconds=round(seconds, 4), images_per_s=round(images / max(seconds, 1e-9), 2))
            self.scalars.append(**row)
            if self.tensorboard is not None:
                self.tensorboard.append(**row)
        self.bar.update(1)
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
        return loss

    def validate(self, losses, train_time):
        """Validation, checkpoints, metrics.csv and pictures after step self.step; False
        when a stop request interrupted the validation."""
        row = self.task.validate(self, losses, train_time)
        if row is None:
            return False
        self.history.append(row)
        if self.tensorboard is not None:
            self.tensorboard.validation(self.step, row)
        metrics = row["metrics"]
        score = metrics[self.task.SCORE]
        improved = not math.isnan(score) and score > self.best
        if improved:
            self.best = score
        with self.stop.lock:
            state = self._state(metrics)
            self._save("last.pt", state)
            if improved:
                self._save("best.pt", state)
            if self.env.main:
                report.write_csv(self.run_dir / "metrics.csv",
                                 [{k: v for k, v in h.items() if k != "metrics"}
                                  for h in self.history])
                self.task.pictures(self)
        return True

    def _finish(self):
        self.bar.close()  # before the final report's table
        if not self.history:
            raise TrainingError("no step was run (the run being resumed has already finished)")
        metrics = self.history[-1]["metrics"]
        self.task.final_report(self, metrics)
        return metrics
