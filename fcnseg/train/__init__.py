"""Training of pixelwise classifiers: dense (whole-image) or patch-by-patch steps on images
with label masks, or a patch classifier on labelled patches.

Entry point: `run(settings, run_dir)` with a `TrainSettings` (or the plain nested dicts
`TrainSettings.from_dict` reads; tools/train.py passes its Hydra config that way). The
model recipes and checkpoints it writes live in fcnseg.checkpoint; devices, ranks and mixed
precision in fcnseg.runtime; datasets and augmentation in fcnseg.data.

Layout, from the entry down: trainer.py (run: the data kind's task, one run),
training_run.py (what every run does around its steps: checkpoints, resume, stop,
validation bookkeeping), task.py (the interface of a task), segmentation.py (images with
label masks) and classify.py (labelled patches), networks.py (the model and its dense
nets), cost.py (FLOPs/memory/time of a step before it runs, and the settings that fit),
evaluate.py (validation, and a checkpoint scored later: evaluate_checkpoint), loaders.py
(batches and their seeds), step.py (dense and micro-batched patch steps), sampling.py,
losses.py, metrics.py, schedule.py (steps, validation points, learning rate), signals.py
(stop on SIGTERM/SIGINT), report.py (what a run leaves behind), settings.py (every
default), errors.py.
"""
from fcnseg.settings import SettingsError
from fcnseg.train.errors import TrainingError
from fcnseg.train.metrics import ConfusionMatrix
from fcnseg.train.settings import TrainerSettings, TrainSettings
from fcnseg.train.trainer import TASKS, run

__all__ = ["run", "TASKS", "TrainingError", "SettingsError", "TrainSettings",
           "TrainerSettings", "ConfusionMatrix"]
