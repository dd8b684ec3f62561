"""ResNet (He et al. 2016), ResNeXt and Wide ResNet: torchvision's builders, so that the
published ImageNet weights load; width_mult resizes every layer (width.py).
resnet50 with 1000 classes: 25,557,032 parameters.
"""
import torchvision.models as tvm

from .registry import register
from .width import check_runs, rescale

MODELS = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (tvm.resnet101, tvm.ResNet101_Weights.IMAGENET1K_V1),
    "resnet152": (tvm.resnet152, tvm.ResNet152_Weights.IMAGENET1K_V1),
    "resnext50_32x4d": (tvm.resnext50_32x4d, tvm.ResNeXt50_32X4D_Weights.IMAGENET1K_V1),
    "wide_resnet50_2": (tvm.wide_resnet50_2, tvm.Wide_ResNet50_2_Weights.IMAGENET1K_V1),
}


def torchvision_builder(name, fn, weights, **kwargs):
    """Register a torchvision classifier whose widths are rescaled after building."""
    size = lambda: weights.transforms().crop_size[0]  # noqa: E731  the published crop (224)

    @register(name, input_size=size, published=lambda model: weights.get_state_dict(progress=True))
    def build(num_classes, in_channels, width_mult):
        model = rescale(fn(num_classes=num_classes, **kwargs), width_mult, in_channels)
        if width_mult != 1.0:
            check_runs(model, in_channels, size(), name, width_mult)
        return model


for _name, (_fn, _w) in MODELS.items():
    torchvision_builder(_name, _fn, _w)
