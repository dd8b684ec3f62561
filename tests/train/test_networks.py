"""The networks a run trains and evaluates (fcnseg.train.networks)."""
import pytest
import torch

from fcnseg.train import TrainingError, TrainSettings
from fcnseg.train.networks import build_networks, patch_classifier


def _settings(**trainer):
    return TrainSettings.from_dict({"model": {"name": "patchnet", "kwargs": {"width_mult": 0.25}},
                                    "data": {"root": "x"}, "trainer": trainer})


def test_the_dense_nets_run_on_the_classifiers_own_parameters():
    nets = build_networks(_settings(), num_classes=3, in_channels=1)
    assert nets.stride == 2 and nets.train_net is not nets.eval_net and nets.patch_size is not None
    x = torch.randn(1, 1, 20, 20)
    nets.eval_net.eval()
    before = nets.eval_net(x)
    with torch.no_grad():
        [c for c in nets.model.modules() if isinstance(c, torch.nn.Conv2d)][-1].bias.add_(1.0)
    assert not torch.equal(before, nets.eval_net(x))  # no copy: training moves what validation sees
    patch = build_networks(_settings(method="patch"), num_classes=3, in_channels=1)
    assert patch.stride == 1 and patch.train_net is patch.model


def test_labelled_patches_build_a_classifier_of_their_size():
    model_settings = _settings().model
    spec, model = patch_classifier(model_settings, (20, 20), 3, 1)
    assert tuple(model.patch_size) == (20, 20) and spec["kwargs"]["patch_size"] == 20
    lenet = TrainSettings.from_dict({"model": {"name": "lenet5"}, "data": {"root": "x"}}).model
    with pytest.raises(TrainingError, match="never resized") as e:
        patch_classifier(lenet, (20, 20), 3, 1)
    assert e.value.fixes == ["model=patchnet"]
