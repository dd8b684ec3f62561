"""Inception-v4 (Szegedy et al. 2017) from timm, whose builder loads the published weights
(ported from TensorFlow). timm is imported only when the network is built.
"""
from fcnseg.extras import require

from .registry import register
from .width import check_runs, rescale


def _timm():
    return require("timm", "fcnseg.zoo 'inception_v4'")


def _size():
    return _timm().models.get_pretrained_cfg("inception_v4").input_size[-1]  # 299


def _published(model):
    return _timm().create_model("inception_v4", pretrained=True).state_dict()


@register("inception_v4", input_size=_size, published=_published)
def _inception_v4(num_classes, in_channels, width_mult):
    model = _timm().create_model("inception_v4", num_classes=num_classes, in_chans=in_channels)
    model = rescale(model, width_mult, in_channels)
    if width_mult != 1.0:
        check_runs(model, in_channels, _size(), "inception_v4", width_mult)
    return model
