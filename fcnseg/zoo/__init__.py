"""The classification zoo: every network of the lecture notes (README, References), and the torchvision/timm
classifiers, as patch classifiers that `fcnseg.densify` converts exactly.

    model = fcnseg.zoo.create("vgg16", num_classes=21)          # valid padding
    dense = fcnseg.densify(model)                                # == patchwise, every pixel

`create` returns an `nn.Module` with a `patch_size` attribute `(P, Q)`:
- `padding="valid"`: internal zero padding removed by `fcnseg.strip_padding` (parameters
  shared); `patch_size` is the patch it computes. `densify` is exact at every pixel.
- `padding="same"`: the original network; `patch_size` is the input size the architecture
  was defined or trained at. `densify` refuses it (padding inside the net); use
  `fcnseg.zoo.strided_fcn` for the fully convolutional form on the stride grid.
"""
from __future__ import annotations

import inspect

import torch.nn as nn

from .fcn import strided_fcn
from .registry import Spec, has_published_weights, names, register, spec
from .weights import load_pretrained


def create(name: str, num_classes: int, in_channels: int = 3, width_mult: float = 1.0,
           padding: str = "valid", pretrained=False, **options) -> nn.Module:
    """Build `name` as a patch classifier with a computed `patch_size` attribute.

    pretrained: False; True (the published ImageNet weights, downloaded by torchvision or
    timm); or a path to a local state dict (.pt/.pth via torch.load(weights_only=True), or
    .safetensors). With num_classes != the weights' classes the last layer keeps its fresh
    initialisation; with in_channels != the weights' (3 for ImageNet) the first convolution
    is adapted as timm does (1 channel: summed over RGB; more: RGB repeated and rescaled by
    3/in_channels; logged); everything else must match exactly. options: the builder's own
    keywords, e.g. patch_size= for patchnet (its layers computed for that patch).
    """
    s = spec(name)
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    unknown = sorted(set(options) - set(inspect.signature(s.build).parameters))
    if unknown:
        raise TypeError(f"fcnseg.zoo: {name} takes no option {', '.join(unknown)}; its builder's "
                        f"keywords are {list(inspect.signature(s.build).parameters)}")
    model = s.build(num_classes, in_channels, width_mult, **options)
    if pretrained is not False and pretrained is not None:
        load_pretrained(model, name, s.published, pretrained, width_mult=width_mult)
    if padding == "same":
        size = s.input_size()
        # a builder that computed its patch (patchnet's patch_size=) knows it better than the default
        model.patch_size = tuple(getattr(model, "patch_size", None) or (size, size))
        return model
    from fcnseg.convert.strip import strip_padding  # imported late so the zoo lists without it

    training = model.training
    model.eval()  # shape probes on small maps: training-mode batch norm would refuse 1x1 maps
    valid, patch = strip_padding(model, in_channels=in_channels)
    model.train(training)
    valid.train(training)
    valid.patch_size = tuple(patch)
    return valid


# One module per family; importing registers its names.
from . import (  # noqa: E402,F401
    alexnet,
    densenet,
    efficientnet,
    googlenet,
    inception,
    lenet,
    mobilenet,
    nin,
    patchnets,
    resnet,
    shufflenet,
    toy,
    vgg,
)

__all__ = ["Spec", "create", "names", "register", "spec", "has_published_weights", "strided_fcn",
           "load_pretrained"]
