"""Small custom patch classifiers: plain valid convolutions, max pooling, FC head.

No padding, no batch norm, no global pooling: every layer is either pointwise or a
window, so the dense network is exact at every pixel and trains exactly like the
patch network (docs/algorithm.md, "d-regularly sparse kernels" and
"Backward propagation and training").

The patch size is derived from the layer list and the size of the last feature map
that the first FC layer reads (walking the layers backwards), never typed. For a
patch size given by the data (`patchnet(..., patch_size=P)`), the layer list is
computed instead: see `patchnet_layers`.
"""
import torch.nn as nn

from .registry import register


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


def _spec_patch_size(spec, head_map):
    """The same backward walk on a layer list (no modules built)."""
    side = head_map
    for item in reversed(spec):
        k, s = (item[2], 1) if item[0] == "conv" else (item[1], item[1])
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

# The stages of PATCHNET (each ends in a 2x2 pool), and the stage appended for every
# further pool that a patch larger than the default needs.
PATCHNET_STAGES = [PATCHNET[0:3], PATCHNET[3:6], PATCHNET[6:8], PATCHNET[8:10]]
EXTRA_STAGE = [("conv", 64, 3), ("pool", 2)]
MIN_HEAD_MAP = 3  # the default's head map: the first FC layer sees a 3x3 layout of features


def patchnet_layers(patch_size):
    """(layer list, head map) of the patchnet family whose computed patch is exactly
    `patch_size` (an int or a square pair), for data whose patch size is given.

    A plain stack of valid 3x3 convs and 2x2 pools maps a head map m to a patch
    2**n * m + b(n) (n pools; b from the backward walk), so one layer list reaches one
    patch size in 2**n. Two more knobs close the gap: m itself, and raising one conv
    kernel of stage j from 3 to 4, which adds 2**j pixels to the patch (stage j runs at
    2**j input pixels per step); the bits of the remainder r < 2**n say which stages
    get a 4x4 conv. n is the largest number of pools that still leaves an m >= 3 head
    map, so the default's 84 px gives exactly PATCHNET with m = 3.
    """
    if isinstance(patch_size, (tuple, list)):
        if len(patch_size) != 2 or patch_size[0] != patch_size[1]:
            raise ValueError(f"patchnet builds square patches; got patch_size={tuple(patch_size)}. "
                             f"Cut square patches, or build your own classifier for "
                             f"{tuple(patch_size)} patches")
        patch_size = patch_size[0]
    side = int(patch_size)
    if side != patch_size or side < 1:
        raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")

    def stages(n):
        return [list(s) for s in PATCHNET_STAGES[:n]] + [list(EXTRA_STAGE)] * max(0, n - len(PATCHNET_STAGES))

    def flat(st):
        return [item for stage in st for item in stage]

    smallest = _spec_patch_size(flat(stages(1)), MIN_HEAD_MAP)
    if side < smallest:
        raise ValueError(f"patchnet needs patches of at least {smallest}x{smallest} px (two 3x3 convs, a "
                         f"2x2 pool and a {MIN_HEAD_MAP}x{MIN_HEAD_MAP} head map); got {side}x{side}. "
                         f"Cut larger patches, or build your own classifier for {side}x{side} patches")
    n = 1
    while side >= _spec_patch_size(flat(stages(n + 1)), MIN_HEAD_MAP):
        n += 1
    st = stages(n)
    base = _spec_patch_size(flat(st), 0)  # the walk is affine: patch = 2**n * m + base
    head_map, rest = divmod(side - base, 2 ** n)
    for j in range(n):
        if rest >> j & 1:  # the last conv of stage j grows from 3x3 to 4x4
            last_conv = max(i for i, item in enumerate(st[j]) if item[0] == "conv")
            kind, out, k = st[j][last_conv]
            st[j] = st[j][:last_conv] + [(kind, out, k + 1)] + st[j][last_conv + 1:]
    spec = flat(st)
    assert _spec_patch_size(spec, head_map) == side, (spec, head_map, side)
    return spec, head_map


# Ciresan et al. (NIPS 2012) EM membrane segmentation net:
# conv 4x4x48, max 2, conv 5x5x48, max 2, conv 4x4x48, max 2, conv 4x4x48, max 2,
# fc 200, fc 2 on 95x95 gray patches (95 is what the backward walk returns).
MEMBRANE = [("conv", 48, 4), ("pool", 2), ("conv", 48, 5), ("pool", 2),
            ("conv", 48, 4), ("pool", 2), ("conv", 48, 4), ("pool", 2)]


@register("patchnet", input_size=_input_size(PATCHNET, MIN_HEAD_MAP))
def patchnet(num_classes, in_channels=3, width_mult=1.0, patch_size=None):
    """patch_size None: the 84 px PATCHNET; an int P: the layers computed for P x P
    patches (patchnet_layers), e.g. the size of a labelled patch dataset."""
    if patch_size is None:
        return _build(PATCHNET, MIN_HEAD_MAP, 128, num_classes, in_channels, width_mult)
    spec, head_map = patchnet_layers(patch_size)
    return _build(spec, head_map, 128, num_classes, in_channels, width_mult)


@register("membrane_net", input_size=_input_size(MEMBRANE, 3))
def membrane_net(num_classes=2, in_channels=1, width_mult=1.0):
    return _build(MEMBRANE, 3, 200, num_classes, in_channels, width_mult)
