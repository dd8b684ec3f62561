"""ShuffleNet V2 1.0x (Ma et al. 2018): torchvision's ShuffleNetV2 with stage widths scaled
by width_mult and kept even (each unit splits its channels in two and shuffles them).
"""
import torchvision.models as tvm

from .classic import width
from .registry import register
from .width import rescale

WEIGHTS = tvm.ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1
STAGES = [24, 116, 232, 464, 1024]  # stem, stage 2-4, final 1x1 conv


@register("shufflenet_v2", input_size=lambda: WEIGHTS.transforms().crop_size[0],
          published=lambda model: WEIGHTS.get_state_dict(progress=True))
def _shufflenet_v2(num_classes, in_channels, width_mult):
    stages = [width(c, width_mult, 2) for c in STAGES[:4]] + [width(STAGES[4], width_mult)]
    model = tvm.ShuffleNetV2([4, 8, 4], stages, num_classes=num_classes)
    return rescale(model, 1.0, in_channels)
