"""Training of pixelwise classifiers: dense (whole-image) or patch-by-patch steps.

Entry point: `run(cfg, run_dir)` with plain-dict settings (tools/train.py passes its
Hydra config as dicts). Checkpoint I/O for other tools: save_checkpoint,
load_checkpoint, model_from_checkpoint.
"""
from fcnseg.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fcnseg.train.loop import TrainingError, evaluate, run
from fcnseg.train.metrics import ConfusionMatrix

__all__ = ["run", "evaluate", "TrainingError", "ConfusionMatrix", "save_checkpoint",
           "load_checkpoint", "model_from_checkpoint"]
