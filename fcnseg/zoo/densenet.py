"""DenseNet-121 (Huang et al. 2017): torchvision's DenseNet with growth rate and stem width
scaled by width_mult (its concatenations stay consistent: every width is a multiple of the
growth rate). Published weights: torchvision's.
"""
import torchvision.models as tvm

from .classic import width
from .registry import register
from .width import rescale

WEIGHTS = tvm.DenseNet121_Weights.IMAGENET1K_V1


def _published(model):
    # torchvision's file predates its module names ("norm.1" for "norm1"); its own loader
    # renames the keys, which we reuse.
    model = tvm.densenet121(weights=WEIGHTS, progress=True)
    return model.state_dict()


@register("densenet121", input_size=lambda: WEIGHTS.transforms().crop_size[0], published=_published)
def _densenet121(num_classes, in_channels, width_mult):
    growth = width(32, width_mult)
    model = tvm.DenseNet(growth_rate=growth, block_config=(6, 12, 24, 16), num_init_features=2 * growth,
                         num_classes=num_classes)
    return rescale(model, 1.0, in_channels)
