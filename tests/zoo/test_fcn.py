"""strided_fcn: what it equals (see fcnseg/zoo/fcn.py), checked against independent computations."""
import torch

import fcnseg
import fcnseg.zoo as zoo


def test_on_the_natural_input_it_is_the_classifier():
    torch.manual_seed(0)
    model = zoo.create("resnet18", num_classes=7, width_mult=1 / 16, padding="same").double().eval()
    fcn = zoo.strided_fcn(model)
    x = torch.randn(2, 3, *model.patch_size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fcn(x)[:, :, 0, 0], model(x), rtol=1e-10, atol=1e-12)


def test_without_padding_it_equals_densify_on_the_stride_grid():
    # A network without padding: every window's crop is exactly what the classifier sees, so the
    # strided FCN must agree with the core's dense network at output_stride = total stride.
    torch.manual_seed(0)
    model = zoo.create("alexnet", num_classes=7, width_mult=1 / 16).double().eval()
    s = fcnseg.geometry_of(model, model.patch_size).total_stride[0]
    x = torch.randn(1, 3, model.patch_size[0] + 2 * s, model.patch_size[1] + s, dtype=torch.float64)
    with torch.no_grad():
        got = zoo.strided_fcn(model)(x)  # (1, 7, 3, 2): windows at (m*s, n*s)
        dense = fcnseg.densify(model, output_stride=s).forward_valid(x)
    assert got.shape == dense.shape == (1, 7, 3, 2)
    torch.testing.assert_close(got, dense, rtol=1e-10, atol=1e-12)


def test_padded_network_matches_its_crops_away_from_the_padding_only():
    # The padded classifier on the crop at (m*s, n*s) sees zeros where the whole-image pass sees
    # neighbours: the two must differ for a padded net (documented), not silently agree.
    torch.manual_seed(0)
    model = zoo.create("vgg11", num_classes=7, width_mult=1 / 16, padding="same").double().eval()
    p, _ = model.patch_size
    x = torch.randn(1, 3, p + 32, p, dtype=torch.float64)
    with torch.no_grad():
        out = zoo.strided_fcn(model)(x)
        assert out.shape == (1, 7, 2, 1)
        crop = model(x[:, :, 32:32 + p])
    assert not torch.allclose(out[:, :, 1, 0], crop)
