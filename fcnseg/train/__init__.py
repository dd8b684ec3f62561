"""Training of pixelwise classifiers: dense (whole-image) or patch-by-patch steps.

Entry point: `run(settings, run_dir)` with a `TrainSettings` (or the plain nested dicts
`TrainSettings.from_dict` reads; tools/train.py passes its Hydra config that way). The
model recipes and checkpoints it writes live in fcnseg.models; devices, ranks and mixed
precision in fcnseg.runtime.

Layout: settings.py (every default), schedule.py (steps, validation points, learning
rate), cost.py (FLOPs/memory/time of a step before it runs), step.py (dense and
micro-batched patch steps), sampling.py, losses.py, metrics.py, signals.py (stop on
SIGTERM/SIGINT), run_base.py (what every run does around its steps: checkpoints, resume,
stop), trainer.py (the run), classify.py (a classifier on labelled patches), report.py
(what a run leaves behind).
"""
from fcnseg.train.metrics import ConfusionMatrix
from fcnseg.train.run_base import TrainingError
from fcnseg.train.settings import SettingsError, TrainerSettings, TrainSettings
from fcnseg.train.trainer import evaluate, run

__all__ = ["run", "evaluate", "TrainingError", "SettingsError", "TrainSettings",
           "TrainerSettings", "ConfusionMatrix"]
