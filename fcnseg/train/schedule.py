"""The run counted in optimiser steps: how many, where epochs begin, when to validate,
and the learning rate after each step.

Segmentation training (torchvision's references, mmsegmentation) budgets optimiser steps:
a 12-image dataset and a 10,000-image dataset then get the same amount of learning for
the same settings, and validation/checkpoints come every `eval_every` steps instead of
after every (possibly two-step) epoch.
"""
import logging
import math
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

# steps="auto": nine passes over the training set, at least 300 and at most 1200 steps.
# Nine epochs is what the demo needs (1125 steps: val mIoU 0.509); a dozen tiles get 300
# steps (2 batches an epoch would give 18, far too few to learn), a large dataset stops at
# 1200 (minutes on a CPU) unless told trainer.steps=N or trainer.epochs=N.
AUTO_EPOCHS, AUTO_MIN_STEPS, AUTO_MAX_STEPS = 9, 300, 1200


@dataclass(frozen=True)
class StepPlan:
    total_steps: int
    steps_per_epoch: int
    eval_every: int

    @classmethod
    def from_settings(cls, trainer, steps_per_epoch):
        if steps_per_epoch < 1:
            raise ValueError("the training split gives no batch; add images or lower "
                             "trainer.batch_size")
        if trainer.epochs:
            total = trainer.epochs * steps_per_epoch
        elif trainer.steps == "auto":
            total = min(AUTO_MAX_STEPS, max(AUTO_MIN_STEPS, AUTO_EPOCHS * steps_per_epoch))
            if total < AUTO_EPOCHS * steps_per_epoch:
                logger.warning("trainer.steps=auto stops at %d steps: %.2f passes over the %d batches of the "
                               "training set; a large dataset wants trainer.steps=N (or a preset, "
                               "+experiment=voc|cityscapes|ade20k)", total, total / steps_per_epoch, steps_per_epoch)
        else:
            total = trainer.steps
        if trainer.max_steps:
            total = min(total, trainer.max_steps)
        return cls(total, steps_per_epoch, min(trainer.eval_every, total))

    def position(self, step):
        """Global step (steps done) -> (epoch, index of the next batch inside it)."""
        return divmod(step, self.steps_per_epoch)

    def evaluates_after(self, step):
        """Validation, checkpoints and pictures follow this step (1-based count of steps done)."""
        return step % self.eval_every == 0 or step == self.total_steps

    @property
    def epochs(self):
        return self.total_steps / self.steps_per_epoch


def lr_factor(sched, step, total_steps):
    """Multiplier of the base learning rate after `step` optimiser steps (sched: a
    fcnseg.train.settings schedule)."""
    warmup = sched.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if sched.name == "poly":
        return (1.0 - t) ** sched.power
    if sched.name == "cosine":
        lo = sched.min_lr_ratio
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))
    if sched.name == "step":
        return sched.gamma ** (step // sched.step_size)
    return 1.0  # constant


def build_scheduler(sched, optimizer, total_steps):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(sched, s, total_steps))


def build_optimizer(optim, params):
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum,
                               weight_decay=optim.weight_decay, nesterov=optim.nesterov)
    return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay,
                             betas=tuple(optim.betas))
