import torch

import fcnseg
import fcnseg.zoo
import fcnseg.zoo.patchnets  # noqa: F401


def test_membrane_net_is_the_classic_95x95_net():
    m = fcnseg.zoo.create("membrane_net", 2, in_channels=1)
    assert m.patch_size == (95, 95)  # computed by strip_padding, as in Ciresan et al.
    convs = [layer for layer in m.modules() if isinstance(layer, torch.nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [
        (48, 1, 4, 4), (48, 48, 5, 5), (48, 48, 4, 4), (48, 48, 4, 4)]
    fcs = [layer for layer in m.modules() if isinstance(layer, torch.nn.Linear)]
    assert [tuple(f.weight.shape) for f in fcs] == [(200, 48 * 3 * 3), (2, 200)]
    assert m(torch.zeros(5, 1, 95, 95)).shape == (5, 2)


def test_patchnet_patch_size_agrees_with_its_own_layer_walk():
    m = fcnseg.zoo.create("patchnet", 7, in_channels=3, width_mult=0.5)
    p = m.patch_size[0]
    assert m.patch_size == (p, p) == (fcnseg.zoo.spec("patchnet").input_size(),) * 2
    assert m(torch.zeros(2, 3, p, p)).shape == (2, 7)
    features = fcnseg.zoo.spec("patchnet").build(num_classes=7, in_channels=3, width_mult=0.5)[0]
    # the FC head reads exactly a 3x3 map at the patch size; one pixel less cannot fill it
    assert features(torch.zeros(1, 3, p, p)).shape[-2:] == (3, 3)
    assert features(torch.zeros(1, 3, p - 1, p - 1)).shape[-1] < 3
    # the demo's garments are up to 45 px: a pixel at a garment's edge must see most of it
    assert p >= 80


def test_patchnet_dense_equals_patchwise_everywhere():
    torch.manual_seed(0)
    m = fcnseg.zoo.create("patchnet", 5, in_channels=1, width_mult=0.25).double().eval()
    x = torch.randn(1, 1, 9, 12, dtype=torch.float64)
    dense = fcnseg.densify(m, pad_mode="replicate")(x)
    ref = fcnseg.patchwise(m, x, pad_mode="replicate")
    assert dense.shape == (1, 5, 9, 12)
    torch.testing.assert_close(dense, ref, rtol=1e-12, atol=1e-12)
