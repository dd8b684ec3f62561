"""What a training run trains: the interface every task implements.

A run (training_run.TrainingRun) counts optimiser steps, validates and checkpoints every
`eval_every` steps, stops and resumes; everything that depends on the kind of data is the
task's: its datasets, model and loaders, one optimiser step, a validation, what a
checkpoint stores besides the weights, and the report. Two tasks exist, chosen by the data
kind (fcnseg.train.trainer.TASKS): pixel segmentation of images with label masks
(segmentation.SegmentationTask) and classification of labelled patches
(classify.PatchClassificationTask).

`Task(settings, env, generator)` builds the data, model and loaders; afterwards the
attributes in `Task.ATTRIBUTES` are set (the run checks them, `check_task`). The methods
take the run where they need its optimiser, step count or stop lock.
"""
from __future__ import annotations

import abc


class Task(abc.ABC):
    SCORE = "miou"  # the validation metric whose best value best.pt keeps
    # set by __init__: the datasets; the trained classifier and its checkpoint recipe; the
    # training loader (its sampler draws from the run's generator); the pixels or patches per
    # class of the training split (for class_weights=auto); the method name of the reports
    # and the checkpoint; whether inputs go channels-last
    ATTRIBUTES = ("train_ds", "val_ds", "model", "spec", "train_loader", "class_counts", "method",
                  "channels_last")

    @abc.abstractmethod
    def __init__(self, settings, env, generator):
        """Datasets, model and loaders from the TrainSettings, on env.device."""

    @classmethod
    def check_environment(cls, env):
        """Refuse a process setup the task cannot run in (a TrainingError); default: any."""
        return None

    def estimate_step(self, run):
        """The cost of one step, checked against the memory limit before the first step
        (a cost.StepCost, logged against the first real step), or None."""
        return None

    @abc.abstractmethod
    def train_mode(self):
        """Put the networks in training mode (with what stays frozen)."""

    def before_steps(self, run) -> bool:
        """What a (resumed) run does before its next step; False when a stop request
        interrupted it."""
        return True

    @abc.abstractmethod
    def step(self, run, batch, epoch, index):
        """One optimiser step on `batch` (the index-th of the epoch) -> the loss (float), or
        None when the batch teaches nothing (the run still counts the step). The weights
        change only in run.commit_step()."""

    @abc.abstractmethod
    def validate(self, run, losses, train_time):
        """The history row of a validation after run.step (with "step", "epoch",
        "train_loss", "train_time_s" and "metrics"); None when a stop request interrupted it."""

    def pictures(self, run):
        """Pictures of the run so far (curves, predictions), written after each validation."""
        return None

    @abc.abstractmethod
    def checkpoint_meta(self) -> dict:
        """What a checkpoint stores besides the weights and the run's state."""

    @abc.abstractmethod
    def check_resumable(self, run, path, checkpoint):
        """Refuse (TrainingError) a checkpoint this task cannot resume from."""

    @abc.abstractmethod
    def summary(self, run) -> str:
        """The line that opens the run's log."""

    @abc.abstractmethod
    def final_report(self, run, metrics):
        """The report of a finished run: the table in the log and metrics.json."""


def check_task(task):
    """A TypeError unless `task` is a Task with every attribute of Task.ATTRIBUTES set."""
    if not isinstance(task, Task):
        raise TypeError(f"{type(task).__name__} is not a fcnseg.train.task.Task")
    missing = [a for a in Task.ATTRIBUTES if not hasattr(task, a)]
    if missing:
        raise TypeError(f"{type(task).__name__} did not set {', '.join(missing)} in __init__")
    return task
