"""Loading weights from a local file: same classes, other classes, and what must fail."""
import pytest
import torch
from safetensors.torch import save_file

import fcnseg
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


@pytest.fixture
def float64():
    """Networks built in float64, so that loading a float64 file rounds nothing."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def _rgb_weights(tmp_path, name="resnet18", width_mult=1 / 16):
    src = zoo.create(name, num_classes=5, width_mult=width_mult, padding="same").eval()
    torch.save(src.state_dict(), tmp_path / "rgb.pt")
    return src, tmp_path / "rgb.pt"


def test_rgb_weights_start_a_gray_network_exactly(tmp_path, caplog, float64):
    rgb, path = _rgb_weights(tmp_path)
    with caplog.at_level("INFO", logger="fcnseg.zoo.weights"):
        gray = zoo.create("resnet18", num_classes=5, in_channels=1, width_mult=1 / 16, padding="same",
                          pretrained=path).eval()
    assert "conv1.weight was trained on 3 input channels; the network takes 1" in caplog.text
    x = torch.rand(2, 1, 48, 40, dtype=torch.float64)
    torch.testing.assert_close(gray(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-12, atol=1e-12)


def test_rgb_weights_start_a_gray_valid_network_through_densify(tmp_path, float64):
    rgb, path = _rgb_weights(tmp_path, name="toy", width_mult=1.0)
    gray = zoo.create("toy", num_classes=5, in_channels=1, pretrained=path).eval()
    x = torch.rand(1, 1, 21, 19, dtype=torch.float64)
    ref = fcnseg.patchwise(rgb, x.expand(-1, 3, -1, -1), 15)  # the RGB classifier on replicated gray
    torch.testing.assert_close(fcnseg.densify(gray)(x), ref, rtol=1e-12, atol=1e-12)


def test_rgb_weights_start_a_five_band_network(tmp_path, float64):
    rgb, path = _rgb_weights(tmp_path)
    bands = zoo.create("resnet18", num_classes=5, in_channels=5, width_mult=1 / 16, padding="same",
                       pretrained=path).eval()
    w3, w5 = rgb.conv1.weight, bands.conv1.weight
    torch.testing.assert_close(w5, torch.cat([w3, w3[:, :2]], dim=1) * (3 / 5), rtol=0, atol=0)
    assert bands(torch.rand(1, 5, 40, 40, dtype=torch.float64)).shape == (1, 5)


def test_published_weights_are_adapted_the_same_way(tmp_path, float64):
    # pretrained=True goes through the same loader; a stand-in for the download
    from fcnseg.zoo.weights import load_pretrained

    rgb, _ = _rgb_weights(tmp_path)
    gray = zoo.create("resnet18", num_classes=5, in_channels=1, width_mult=1 / 16, padding="same")
    load_pretrained(gray, "resnet18", lambda model: rgb.state_dict(), True, width_mult=1.0)
    torch.testing.assert_close(gray.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True), rtol=0, atol=0)
