"""fcnseg: exact, fast whole-image pixelwise classification from any patch classifier.

    dense = fcnseg.densify(model)          # one pass -> scores at every pixel (the optimised form)
    ref = fcnseg.patchwise(model, x)       # crop every patch and classify it (the reference)
    fcnseg.compare_dense(dense, model, x)  # the two at every pixel: max abs / relative error
    valid, patch = fcnseg.strip_padding(torchvision_model)
    model = fcnseg.zoo.create("vgg16", num_classes=21)

The subpackages (zoo, data, infer, train, bench) and the checkpoint and runtime modules are
imported on first use, so that `import fcnseg` costs little more than `import torch`.
"""
import importlib

from .compare import Comparison, compare_dense, grid_pixels, random_grid_pixels
from .convert import (
    ConversionError,
    OutputStrideError,
    PaddingError,
    PatchSizeError,
    UnsupportedLayerError,
    find_patch_size,
    strip_padding,
)
from .convert.optimize import Optimizations
from .dense import DenseClassifier, densify, freeze_batchnorm, geometry_of
from .geometry import Geometry
from .patch import crop_patches, patchwise

__version__ = "0.1.0"

# imported lazily (module __getattr__): they pull in torchvision, PIL, safetensors...
SUBPACKAGES = ("zoo", "data", "infer", "train", "bench", "checkpoint", "runtime", "heads")

__all__ = ["densify", "DenseClassifier", "Optimizations", "patchwise", "crop_patches", "compare_dense",
           "Comparison", "grid_pixels", "random_grid_pixels", "strip_padding", "find_patch_size", "geometry_of",
           "Geometry",
           "freeze_batchnorm", "ConversionError", "PaddingError", "PatchSizeError", "UnsupportedLayerError",
           "OutputStrideError", *SUBPACKAGES]


def __getattr__(name):
    if name in SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fcnseg' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBPACKAGES))
