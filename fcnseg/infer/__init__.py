"""Inference on images and folders: exact tiling, batched runs, atomic results, export."""
from .model import Predictor, load_predictor
from .runner import InferenceSettings, RunResult, run_inference
from .tiling import Prediction, auto_tile_size, plan_tiles, predict_tiled

__all__ = ["InferenceSettings", "Prediction", "Predictor", "RunResult", "auto_tile_size",
           "load_predictor", "plan_tiles", "predict_tiled", "run_inference"]
