"""Errors raised while converting a patch classifier; each names the layer at fault and the fix."""


class ConversionError(ValueError):
    """The model cannot be turned into an exact dense network as it is."""


class PaddingError(ConversionError):
    """A layer zero-pads inside the network: per-patch borders cannot be shared by one dense pass."""


class PatchSizeError(ConversionError):
    """The patch size does not fit the network (pooling windows past the edge, wrong head input)."""


class UnsupportedLayerError(ConversionError):
    """A layer mixes positions in a way no single patch can see, or is not known to fcnseg."""


class OutputStrideError(ConversionError):
    """The requested output stride is not a cumulative stride of the network."""


class PartialWindowError(PatchSizeError, UnsupportedLayerError):
    """Partial ceil-mode windows where no exact dense form exists (read by the per-patch layers after a
    squeeze-excitation gate). Unsupported as built, and a patch size whose windows all fit avoids it,
    so the patch-size search treats it like any size that does not fit."""
