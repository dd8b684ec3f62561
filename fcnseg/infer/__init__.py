"""Inference on images and folders: one image in memory (load_predictor(...).predict), exact
tiling, pipelined folder runs with atomic results and resume, torchrun sharing, export."""
from .model import Prediction, Predictor, load_predictor
from .runner import RunResult, run_inference
from .settings import InferenceSettings
from .tiling import auto_tile_size, plan_tiles, predict_tiled

__all__ = ["InferenceSettings", "Prediction", "Predictor", "RunResult", "auto_tile_size",
           "load_predictor", "plan_tiles", "predict_tiled", "run_inference"]
