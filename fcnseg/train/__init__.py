"""Training of pixelwise classifiers: dense (whole-image) or patch-by-patch steps.

Entry point: `run(cfg, run_dir)` with plain-dict settings (tools/train.py passes its
Hydra config as dicts). The model recipes and checkpoints it writes live in
fcnseg.models; devices, ranks and mixed precision in fcnseg.runtime.
"""
from fcnseg.train.loop import TrainingError, evaluate, run
from fcnseg.train.metrics import ConfusionMatrix

__all__ = ["run", "evaluate", "TrainingError", "ConfusionMatrix"]
