"""Facts of the width-1.0 networks that a wrong definition cannot pass. Built on the meta
device: shapes and parameter counts without memory or arithmetic."""
import pytest
import torch
import torchvision.models as tvm

import fcnseg.zoo as zoo


def meta(name, num_classes=1000):
    with torch.device("meta"):
        return zoo.spec(name).build(num_classes, 3, 1.0)


def count(model):
    return sum(p.numel() for p in model.parameters())


# From the papers / lecture tables; computed by hand from the layer shapes.
PAPER_COUNTS = {
    "vgg16": 138_357_544,  # Simonyan & Zisserman, configuration D
    "resnet50": 25_557_032,
    # The lecture's single-tower AlexNet: conv 3,747,200 (3.7M) + FC 58,631,144 (58.6M).
    "alexnet": 62_378_344,
    "nin": 7_595_176,  # the lecture's "7.5 million"
    "mobilenet_v1": 4_231_976,
}


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "alexnet", "nin", "mobilenet_v1"])
def test_parameter_count_matches_the_paper(name):
    assert count(meta(name)) == PAPER_COUNTS[name]


def test_lenet5_on_grey_digits():
    with torch.device("meta"):
        m = zoo.spec("lenet5").build(10, 1, 1.0)  # the paper's 32x32 grey digits, 10 classes
    assert count(m) == 61_706


def test_alexnet_head_split_matches_the_lecture():
    m = meta("alexnet")
    conv = sum(p.numel() for p in m.features.parameters())
    fc = sum(p.numel() for p in m.classifier.parameters())
    assert (conv, fc) == (3_747_200, 58_631_144)


TORCHVISION = {
    "vgg11": tvm.VGG11_Weights, "vgg13": tvm.VGG13_Weights, "vgg16": tvm.VGG16_Weights,
    "vgg19": tvm.VGG19_Weights, "resnet18": tvm.ResNet18_Weights, "resnet34": tvm.ResNet34_Weights,
    "resnet50": tvm.ResNet50_Weights, "resnet101": tvm.ResNet101_Weights, "resnet152": tvm.ResNet152_Weights,
    "resnext50_32x4d": tvm.ResNeXt50_32X4D_Weights, "wide_resnet50_2": tvm.Wide_ResNet50_2_Weights,
    "googlenet": tvm.GoogLeNet_Weights, "densenet121": tvm.DenseNet121_Weights,
    "mobilenet_v2": tvm.MobileNet_V2_Weights, "shufflenet_v2": tvm.ShuffleNet_V2_X1_0_Weights,
    "efficientnet_b0": tvm.EfficientNet_B0_Weights, "alexnet_torchvision": tvm.AlexNet_Weights,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_parameter_count_matches_the_published_weights(name):
    # torchvision records each published file's parameter count: an independent reference.
    expected = TORCHVISION[name].IMAGENET1K_V1.meta["num_params"]
    if name == "googlenet":  # the file also holds the two auxiliary classifiers
        expected = 6_624_904
    assert count(meta(name)) == expected


def test_inception_v4_parameter_count():
    assert count(meta("inception_v4")) == 42_679_816


def _shapes(model, size):
    """Output shape of every conv/pool module of `model` on a size x size input (meta device)."""
    out = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, tuple(o.shape)))
             for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d))]
    with torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    for h in hooks:
        h.remove()
    return out


def test_alexnet_conv1_is_55x55_on_227():
    m = meta("alexnet")
    assert zoo.spec("alexnet").input_size() == 227
    assert _shapes(m, 227)["features.0"] == (1, 96, 55, 55)


@pytest.mark.parametrize("name, size, final", [
    ("alexnet", 227, 6), ("cnn_f", 227, 6), ("cnn_m", 227, 6), ("cnn_s", 233, 6), ("clarifai", 227, 6),
    ("overfeat_fast", 231, 6), ("overfeat_accurate", 221, 5), ("vgg16", 224, 7), ("vgg16_c", 224, 7),
    ("deep_image", 224, 7), ("nin", 227, 6), ("lenet5", 32, 1), ("toy", 15, 2),
])
def test_natural_input_gives_the_papers_final_map(name, size, final):
    assert zoo.spec(name).input_size() == size
    shapes = _shapes(meta(name), size)
    last_pool = [v for k, v in shapes.items()][-1 if name != "toy" else -2]
    assert last_pool[-2:] == (final, final)


def test_overfeat_fc_widths():
    m = meta("overfeat_fast")
    lin = [layer for layer in m.classifier if isinstance(layer, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in lin] == [(1024 * 36, 3072), (3072, 4096), (4096, 1000)]
    m = meta("deep_image")
    assert [layer.out_features for layer in m.classifier if isinstance(layer, torch.nn.Linear)] == [6144, 6144, 1000]


def test_vgg16_c_has_1x1_convs_in_stages_3_to_5():
    m = meta("vgg16_c")
    kernels = [c.kernel_size[0] for c in m.features if isinstance(c, torch.nn.Conv2d)]
    assert kernels == [3, 3, 3, 3, 3, 3, 1, 3, 3, 1, 3, 3, 1]


def test_width_mult_scales_every_layer():
    m = zoo.spec("resnext50_32x4d").build(7, 3, 1 / 16)
    widths = {c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d)}
    assert max(widths) == 2048 // 16
    assert m.fc.in_features == 2048 // 16 and m.fc.out_features == 7
    grouped = m.layer1[0].conv2
    assert grouped.in_channels == 8 and grouped.groups == 8  # gcd(32, 8): groups stay valid
    v = zoo.spec("vgg16").build(7, 3, 0.25)
    assert v.classifier[0].out_features == 1024 and v.features[0].out_channels == 16


def test_in_channels_reaches_the_first_conv():
    for name in ("resnet18", "vgg11", "inception_v4", "densenet121", "mobilenet_v2"):
        m = zoo.spec(name).build(7, 1, 1 / 16)
        first = next(c for c in m.modules() if isinstance(c, torch.nn.Conv2d))
        assert first.in_channels == 1, name
