"""Optional packages: which extra of fcnseg installs each, and the error that names it.

`pip install fcnseg` is the core (torch, torchvision, numpy, safetensors): densify, patchwise,
compare_dense, strip_padding and the zoo. Every other feature imports its package on first use
through `require`, so that a missing package stops with the extra and the command that installs
it instead of a bare ModuleNotFoundError:

    A = require("albumentations", "augmentation (aug=...)")
    plt = require("matplotlib.pyplot", "curves.png")
"""
from __future__ import annotations

import importlib
from types import ModuleType

#: top-level import name -> (distribution on PyPI, the extra of pyproject.toml that installs it)
PACKAGES: dict[str, tuple[str, str]] = {
    "PIL": ("pillow", "infer"),
    "cv2": ("opencv-python-headless", "infer"),
    "tqdm": ("tqdm", "infer"),
    "hydra": ("hydra-core", "infer"),
    "omegaconf": ("hydra-core", "infer"),
    "albumentations": ("albumentations", "train"),
    "matplotlib": ("matplotlib", "train"),
    "segmentation_models_pytorch": ("segmentation-models-pytorch", "smp"),
    "timm": ("timm", "smp"),
    "tifffile": ("tifffile", "large"),
    "zarr": ("zarr", "large"),
    "imagecodecs": ("imagecodecs", "large"),
    "openslide": ("openslide-python", "slide"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "torch.utils.tensorboard": ("tensorboard", "tensorboard"),  # torch's writer, over the tensorboard package
}


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the extra and the pip command."""

    def __init__(self, module: str, purpose: str, distribution: str, extra: str, missing: str | None = None):
        self.extra = extra
        self.distribution = distribution
        super().__init__(
            f"{purpose} needs the package {distribution} (import {module}), which is not installed; "
            f"it comes with fcnseg's '{extra}' extra. Fix: pip install 'fcnseg[{extra}]' "
            f"(from a clone: pip install -e '.[{extra}]')", name=missing or module.split(".")[0])


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` (dotted names too: "matplotlib.pyplot"); `purpose` says what needs it.

    Raises MissingExtraError when the package, or another optional package it imports (torch's
    tensorboard writer needs tensorboard), is absent. A package that fails to import for another
    reason (a broken dependency of its own) raises its own error.
    """
    top = module.split(".")[0]
    if module not in PACKAGES and top not in PACKAGES:
        raise KeyError(f"fcnseg.extras: no extra lists the package {top!r}; add it to PACKAGES and to "
                       "pyproject.toml's optional-dependencies")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = (e.name or "").split(".")[0]
        if missing not in PACKAGES and missing != top:
            raise
        distribution, extra = PACKAGES.get(missing) or PACKAGES.get(module) or PACKAGES[top]
        raise MissingExtraError(module, purpose, distribution, extra, missing or top) from e
