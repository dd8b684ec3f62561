import pytest
import torch.nn as nn

import fcnseg.zoo as zoo

REQUIRED = {
    "toy", "lenet5", "alexnet", "cnn_f", "cnn_m", "cnn_s", "clarifai", "overfeat_fast", "overfeat_accurate",
    "vgg11", "vgg11_lrn", "vgg13", "vgg16", "vgg16_c", "vgg19", "deep_image", "nin", "googlenet", "resnet18",
    "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2", "densenet121",
    "mobilenet_v1", "mobilenet_v2", "shufflenet_v2", "efficientnet_b0", "inception_v4",
}


def test_every_required_network_is_registered():
    assert REQUIRED <= set(zoo.names())


def test_duplicate_name_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        zoo.register("vgg16", input_size=lambda: 224)(lambda *a: nn.Identity())


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="vgg16"):
        zoo.create("vgg17", num_classes=7)


def test_bad_padding_is_refused():
    with pytest.raises(ValueError, match="valid"):
        zoo.create("toy", num_classes=7, padding="reflect")


def test_same_padding_patch_is_the_architecture_input():
    m = zoo.create("alexnet", num_classes=7, width_mult=1 / 16, padding="same")
    assert m.patch_size == (227, 227)
