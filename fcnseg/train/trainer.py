"""The entry point of training: settings -> the task of the data kind -> one training run.

`run(settings, run_dir)` takes a TrainSettings, or the plain nested dicts a config system
produces (tools/train.py passes its Hydra config that way; the library never imports
Hydra). The data kind's dataset class says what it trains (fcnseg.data.DATASETS, its
`task` attribute); TASKS maps that to the task that trains it.
"""
from __future__ import annotations

import logging
from pathlib import Path

from fcnseg import runtime
from fcnseg.data import dataset_class
from fcnseg.settings import SettingsError
from fcnseg.train.classify import PatchClassificationTask
from fcnseg.train.segmentation import SegmentationTask
from fcnseg.train.settings import TrainSettings
from fcnseg.train.training_run import TrainingRun

# what a data kind trains (its dataset class's `task`) -> the task that trains it
TASKS = {"segmentation": SegmentationTask, "patches": PatchClassificationTask}


def task_for(kind):
    """The task class that trains data of `kind` (a key of fcnseg.data.DATASETS)."""
    name = getattr(dataset_class(kind), "task", None)
    if name not in TASKS:
        raise SettingsError("data.kind", f"dataset kind {kind!r} trains {name!r}, which no training "
                            f"task handles; the tasks are {', '.join(TASKS)}")
    return TASKS[name]


def run(settings, run_dir, *, exit_on_signal=False):
    """Train as `settings` say, writing checkpoints and reports into run_dir. Returns the
    final validation metrics (also on rank > 0), or {"interrupted": True, "step": n,
    "run_dir": ..., "signal": ...} after a stop signal. exit_on_signal: a command line run;
    a step still busy 2 s after SIGTERM/SIGINT is abandoned and the process exits (see
    fcnseg.train.signals). A library caller keeps its process: the run stops at the
    next step boundary."""
    if not isinstance(settings, TrainSettings):
        settings = TrainSettings.from_dict(settings)
    task = task_for(settings.data.kind)
    env = runtime.init_distributed(settings.trainer.device)
    # one story per run: ranks other than 0 log errors only (every rank is its own process)
    package_logger = logging.getLogger("fcnseg.train")
    level = package_logger.level
    if not env.main:
        package_logger.setLevel(logging.ERROR)
    try:
        return TrainingRun(task, settings, Path(run_dir), env).fit(exit_on_signal)
    finally:
        package_logger.setLevel(level)
        runtime.cleanup_distributed(env)
