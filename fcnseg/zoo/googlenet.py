"""GoogLeNet / Inception v1 (Szegedy et al. 2015): torchvision's builder, no auxiliary
classifiers (they are training-time losses, not part of the patch classifier).

The published weights were ported from TensorFlow and expect torchvision's
`transform_input=True` (a per-channel affine of the input, pointwise in space), which
`pretrained=True` switches on exactly as torchvision does (for RGB input only).
"""
import torchvision.models as tvm

from .registry import register
from .width import check_runs, rescale

WEIGHTS = tvm.GoogLeNet_Weights.IMAGENET1K_V1


def _published(model):
    # the input convention the ported weights were trained with; it is written for three RGB
    # channels, so a gray or multi-band network goes without it (its first convolution is adapted)
    model.transform_input = model.conv1.conv.in_channels == 3
    state = WEIGHTS.get_state_dict(progress=True)
    return {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}


def _size():
    return WEIGHTS.transforms().crop_size[0]


@register("googlenet", input_size=_size, published=_published)
def _googlenet(num_classes, in_channels, width_mult):
    model = tvm.GoogLeNet(num_classes=num_classes, aux_logits=False, transform_input=False,
                          init_weights=True)
    model = rescale(model, width_mult, in_channels)
    if width_mult != 1.0:
        check_runs(model, in_channels, _size(), "googlenet", width_mult)
    return model
