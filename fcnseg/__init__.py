"""fcnseg: exact, fast whole-image pixelwise classification from any patch classifier.

    dense = fcnseg.densify(model)          # one pass -> scores at every pixel
    ref = fcnseg.patchwise(model, x)       # crop every patch and classify it (the reference)
    valid, patch = fcnseg.strip_padding(torchvision_model)
"""
from .convert import (ConversionError, OutputStrideError, PaddingError, PatchSizeError, UnsupportedLayerError,
                      find_patch_size, strip_padding)
from .dense import DenseNet, densify, freeze_batchnorm, geometry
from .geometry import Geometry
from .patch import crop_patches, patchwise

__version__ = "0.1.0"
__all__ = ["densify", "patchwise", "crop_patches", "strip_padding", "find_patch_size", "geometry",
           "freeze_batchnorm", "DenseNet", "Geometry", "ConversionError", "PaddingError", "PatchSizeError",
           "UnsupportedLayerError", "OutputStrideError"]
