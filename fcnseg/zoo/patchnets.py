"""Small custom patch classifiers: plain valid convolutions, max pooling, FC head.

No padding, no batch norm, no global pooling: every layer is either pointwise or a
window, so the dense network is exact at every pixel and trains exactly like the
patch network (ALGORITHM.md sections 3 and 5).

The patch size is derived from the layer list and the size of the last feature map
that the first FC layer reads (walking the layers backwards), never typed.
"""
import torch.nn as nn

from fcnseg.zoo import register


def _scaled(c, width_mult):
    return max(1, int(round(c * width_mult)))


def _patch_size(features, head_map):
    """Smallest input side that leaves a head_map x head_map map after `features`."""
    side = head_map
    for layer in reversed(list(features)):
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            k = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
            s = layer.stride if isinstance(layer.stride, int) else layer.stride[0]
            side = (side - 1) * s + k
    return side


def _build(spec, head_map, hidden, num_classes, in_channels, width_mult):
    """spec: list of ("conv", out_channels, kernel) or ("pool", kernel) in order."""
    layers, c = [], in_channels
    for item in spec:
        if item[0] == "conv":
            out = _scaled(item[1], width_mult)
            layers += [nn.Conv2d(c, out, item[2]), nn.ReLU(inplace=True)]
            c = out
        else:
            layers.append(nn.MaxPool2d(item[1], item[1]))
    features = nn.Sequential(*layers)
    h = _scaled(hidden, width_mult)
    net = nn.Sequential(
        features,
        # identity at the patch size (a 1x1 window); as in torchvision's VGG it lets the
        # classifier run on larger inputs, which the patch-size search of strip_padding probes
        nn.AdaptiveAvgPool2d(head_map),
        nn.Flatten(),
        nn.Linear(c * head_map * head_map, h),  # reads the whole head_map x head_map map
        nn.ReLU(inplace=True),
        nn.Linear(h, num_classes),
    )
    _init(net)
    side = _patch_size(features, head_map)
    net.patch_size = (side, side)
    return net


def _init(net):
    """He-normal weights, zero biases, a near-zero last layer. PyTorch's default init
    (uniform, gain 1/sqrt(3)) shrinks the signal at each of these plain ReLU layers (no
    normalisation to undo it), which slows the first epochs; the last layer starts every
    class at the same score."""
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers[:-1]:
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.zeros_(m.bias)
    nn.init.normal_(layers[-1].weight, std=0.01)
    nn.init.zeros_(layers[-1].bias)


def _input_size(spec, head_map):
    return lambda: _patch_size(_build(spec, head_map, 1, 1, 1, 1e-9)[0], head_map)


# The demo's default: VGG-like 3x3 stacks with four pools. A pixel's label is the garment
# it belongs to (garments up to 45 px in the Fashion-MNIST scenes), so even a pixel at a
# garment's edge must see most of it: the computed patch is 84 px (three pools gave 44 px,
# about half a garment seen from its edge). See docs/training.md for the measured runs.
PATCHNET = [("conv", 16, 3), ("conv", 16, 3), ("pool", 2),
            ("conv", 32, 3), ("conv", 32, 3), ("pool", 2),
            ("conv", 48, 3), ("pool", 2),
            ("conv", 64, 3), ("pool", 2)]

# Ciresan et al. (NIPS 2012) EM membrane segmentation net, as in the lecture notes:
# conv 4x4x48, max 2, conv 5x5x48, max 2, conv 4x4x48, max 2, conv 4x4x48, max 2,
# fc 200, fc 2 on 95x95 gray patches (95 is what the backward walk returns).
MEMBRANE = [("conv", 48, 4), ("pool", 2), ("conv", 48, 5), ("pool", 2),
            ("conv", 48, 4), ("pool", 2), ("conv", 48, 4), ("pool", 2)]


@register("patchnet", input_size=_input_size(PATCHNET, 3))
def patchnet(num_classes, in_channels=3, width_mult=1.0):
    return _build(PATCHNET, 3, 128, num_classes, in_channels, width_mult)


@register("membrane_net", input_size=_input_size(MEMBRANE, 3))
def membrane_net(num_classes=2, in_channels=1, width_mult=1.0):
    return _build(MEMBRANE, 3, 200, num_classes, in_channels, width_mult)
