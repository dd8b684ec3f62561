"""Refusals name the layer at fault and the fix."""
import pytest
import torch
from torch import nn

import fcnseg

from helpers import K, lecture_net


def test_internal_padding_names_layer_and_offers_strip_padding():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, K, 3, padding=1), nn.AdaptiveAvgPool2d(1))
    with pytest.raises(fcnseg.PaddingError, match=r"layer '2'.*strip_padding"):
        fcnseg.densify(model, 9)


def test_pooling_padding_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(3, 2, padding=1), nn.Conv2d(4, K, 2))
    with pytest.raises(fcnseg.PaddingError, match="layer '1'"):
        fcnseg.densify(model, 7)


def test_training_mode_batchnorm_refused_at_run_time():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, K, 3))
    dense = fcnseg.densify(model, 5)
    with pytest.raises(fcnseg.ConversionError, match=r"layer '1' \(BatchNorm2d\).*freeze_batchnorm"):
        dense(torch.randn(1, 3, 6, 6))
    fcnseg.freeze_batchnorm(model)
    assert dense(torch.randn(1, 3, 6, 6)).shape == (1, K, 6, 6)


def test_unknown_layer_named():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2), nn.Conv2d(4, K, 6))
    with pytest.raises(fcnseg.UnsupportedLayerError, match=r"layer '1'.*Upsample"):
        fcnseg.densify(model, 5)


def test_pooling_padding_refuses_with_the_fix():
    # ceil-mode partial windows convert exactly (tests/convert/test_edge_maps.py); a padded pooling window
    # (partial at the first position too) does not
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.MaxPool2d(3, 2, padding=1), nn.Conv2d(3, K, 7))
    with pytest.raises(fcnseg.PaddingError, match=r"layer '1'.*strip_padding"):
        fcnseg.densify(model, 16)


def test_wrong_patch_size_for_head():
    with pytest.raises(fcnseg.PatchSizeError, match=r"\(N, K\) or \(N, K, 1, 1\)"):
        fcnseg.densify(lecture_net(), 21)


def test_unreachable_output_stride_lists_valid_ones():
    with pytest.raises(fcnseg.OutputStrideError, match=r"Valid output strides: \[1, 2, 6\]"):
        fcnseg.densify(lecture_net(), 15, output_stride=4)


def test_missing_patch_size_and_bad_pad_mode():
    with pytest.raises(ValueError, match="patch_size"):
        fcnseg.densify(lecture_net())
    with pytest.raises(ValueError, match="pad_mode"):
        fcnseg.densify(lecture_net(), 15, pad_mode="circular")


def test_wrong_input_channels():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        fcnseg.densify(lecture_net(), 15)(torch.randn(1, 1, 8, 8))
