"""Loading weights from a local file: same classes, other classes, and what must fail."""
import pytest
import torch
from safetensors.torch import save_file

import fcnseg.zoo as zoo


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_same_classes_load_every_tensor(tmp_path, suffix):
    src = zoo.create("resnet18", num_classes=7, width_mult=1 / 16, padding="same")
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    torch.save(state, path) if suffix == ".pt" else save_file(state, str(path))
    dst = zoo.create("resnet18", num_classes=7, width_mult=1 / 16, padding="same", pretrained=path)
    assert _same(src.state_dict(), dst.state_dict())


def test_other_classes_reinitialise_only_the_head(tmp_path):
    src = zoo.create("vgg11", num_classes=10, width_mult=1 / 16, padding="same")
    path = tmp_path / "vgg.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = zoo.create("vgg11", num_classes=7, width_mult=1 / 16, padding="same", pretrained=path)
    s, d = src.state_dict(), dst.state_dict()
    head = {"classifier.6.weight", "classifier.6.bias"}
    assert _same({k: s[k] for k in s if k not in head}, d)
    assert d["classifier.6.weight"].shape == (7, 256)


def test_valid_model_shares_the_loaded_weights(tmp_path):
    src = zoo.create("toy", num_classes=7, padding="same")
    torch.save(src.state_dict(), tmp_path / "toy.pt")
    dst = zoo.create("toy", num_classes=7, pretrained=tmp_path / "toy.pt")
    x = torch.randn(2, 3, 15, 15)
    torch.testing.assert_close(dst(x).flatten(1), src(x).flatten(1), rtol=0, atol=0)


def test_wrong_width_names_the_mismatched_keys(tmp_path):
    src = zoo.create("resnet18", num_classes=7, width_mult=1 / 8, padding="same")
    torch.save(src.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"shape mismatch conv1.weight: file \(8, 3, 7, 7\)"):
        zoo.create("resnet18", num_classes=7, width_mult=1 / 16, padding="same", pretrained=tmp_path / "w.pt")


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = zoo.create("toy", num_classes=7, padding="same").state_dict()
    state["extra.weight"] = state.pop("3.weight")
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"(?s)missing from the file: 3.weight.*not in the network: extra.weight"):
        zoo.create("toy", num_classes=7, padding="same", pretrained=tmp_path / "w.pt")


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"w": torch.zeros(1), "obj": _Pickled()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global"):
        zoo.create("toy", num_classes=7, padding="same", pretrained=tmp_path / "evil.pt")


class _Pickled:
    pass


def test_no_published_weights_says_so():
    with pytest.raises(ValueError, match="'cnn_s' has no published weights.*vgg16"):
        zoo.create("cnn_s", num_classes=7, padding="same", pretrained=True)


def test_published_weights_only_at_full_width():
    with pytest.raises(ValueError, match="width_mult=1.0 only"):
        zoo.create("resnet18", num_classes=7, width_mult=0.5, padding="same", pretrained=True)
