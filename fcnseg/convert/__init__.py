"""Conversion of a patch classifier to its exact dense network (docs/algorithm.md)."""
from .errors import ConversionError, OutputStrideError, PaddingError, PatchSizeError, UnsupportedLayerError
from .strip import find_patch_size, strip_padding
from .trace import trace

__all__ = ["ConversionError", "OutputStrideError", "PaddingError", "PatchSizeError", "UnsupportedLayerError",
           "find_patch_size", "strip_padding", "trace"]
