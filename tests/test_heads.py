"""Classifiers with several outputs: the same structure of dense maps, each head exact."""
import pytest
import torch
from torch import nn

import fcnseg

from helpers import Head, check_dense, grads_match


class Trunk(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.conv1, self.pool, self.conv2 = nn.Conv2d(2, 4, 3), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3)
        self.cls = nn.Conv2d(6, 3, 2)                     # map head (N, 3, 1, 1)
        self.fc = nn.Linear(6 * 2 * 2, 5)                 # flat head (N, 5)
        self.box = nn.Linear(5, 4)

    def forward(self, x):
        f = torch.relu(self.conv2(self.pool(torch.relu(self.conv1(x)))))     # (N, 6, 2, 2) for a 10x10 patch
        cls = self.cls(f).softmax(1)
        emb = torch.tanh(self.fc(f.flatten(1)))
        if self.kind == "tuple":
            return cls, emb, self.box(emb)
        if self.kind == "list":
            return [self.box(emb), cls]
        return {"scores": cls, "box": self.box(emb), "nested": (emb,)}


KEYS = {"tuple": [0, 1, 2], "list": [0, 1], "dict": ["scores", "box"]}


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_every_head_is_exact(kind):
    model = Trunk(kind).double().eval()
    x = torch.randn(2, 2, 7, 9, dtype=torch.float64)
    dense = fcnseg.densify(model, 10)
    out = dense(x)
    assert type(out) is {"tuple": tuple, "list": list, "dict": dict}[kind]
    if kind == "dict":
        assert list(out) == ["scores", "box", "nested"] and out["nested"][0].shape == (2, 5, 7, 9)
    for key in KEYS[kind]:
        check_dense(Head(model, key), x, 10)
        assert torch.equal(out[key], dense(x)[key])


@pytest.mark.parametrize("kind,s", [("tuple", 1), ("dict", 2)])
def test_every_head_backward(kind, s):
    model = Trunk(kind).double().eval()
    for key in KEYS[kind]:
        grads_match(model, torch.randn(1, 2, 6, 5, dtype=torch.float64), 10, output_stride=s, key=key)


def test_heads_of_different_sizes_are_checked_one_by_one():
    class Bad(Trunk):
        def forward(self, x):
            f = self.conv2(self.pool(self.conv1(x)))
            return self.cls(f), f                         # the second output is a 2x2 map
    with pytest.raises(fcnseg.PatchSizeError, match=r"output 'relu|output 'conv2'.*\(1, 6, 2, 2\)"):
        fcnseg.densify(Bad("tuple").double(), 10)


class GatedHeads(nn.Module):
    """Squeeze-excitation before two heads (run per patch) and a third head computed densely."""

    def __init__(self):
        super().__init__()
        self.conv, self.gate = nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 1)
        self.h1, self.h2 = nn.Conv2d(4, 3, 6), nn.Conv2d(4, 2, 6)

    def forward(self, x):
        f = self.conv(x)
        g = f * torch.sigmoid(self.gate(f.mean((2, 3), keepdim=True)))
        return {"a": self.h1(g), "b": self.h2(g), "plain": self.h1(f)}


def test_heads_after_a_squeeze_excitation_gate():
    model = GatedHeads().double().eval()
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64)
    out = fcnseg.densify(model, 8)(x)
    assert list(out) == ["a", "b", "plain"]
    for key in out:
        check_dense(Head(model, key), x, 8)


def test_output_heads_and_clear_head_errors():
    from fcnseg.heads import OneHead, output_heads, resolve_head
    model = Trunk("dict").double().eval()
    assert output_heads(model, 10) == {"scores": 3, "box": 4, "nested": None}
    assert output_heads(nn.Conv2d(2, 7, 3), 3, in_channels=2) == {None: 7}
    assert resolve_head(["scores", "box"], None) == "scores"
    assert resolve_head(["scores", "box"], "1") == "box" and resolve_head([0, 1, 2], -1) == 2
    with pytest.raises(ValueError, match=r"head='nope' is not an output.*\['scores', 'box'\]"):
        resolve_head(["scores", "box"], "nope")
    with pytest.raises(ValueError, match="one output"):
        resolve_head([None], "box")
    # densifying one head computes that head only, exactly
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    box = fcnseg.densify(OneHead(model, "box"), 10)
    assert torch.equal(box(x), fcnseg.densify(model, 10)(x)["box"])
    check_dense(OneHead(model, 1), x, 10)


class ZooTwoHeads(nn.Module):
    """A zoo-built classifier with a class head and a box head (registered by the fixture)."""
    patch_size = (10, 10)

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(),
                                   nn.Conv2d(4, 6, 4))                  # 10 -> 8 -> 4 (partial) -> 1
        self.cls, self.box = nn.Conv2d(6, num_classes, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        f = self.trunk(x)
        return {"prob": self.cls(f).softmax(1), "box": self.box(f)}


@pytest.fixture
def two_heads_checkpoint(tmp_path):
    import fcnseg.zoo as zoo
    from fcnseg.checkpoint import save_checkpoint
    name = "test_two_heads"
    zoo.register(name, input_size=lambda: 10)(lambda k, c, w=1.0: ZooTwoHeads(k, c))
    try:
        torch.manual_seed(0)
        m = ZooTwoHeads(3, 3)
        yield save_checkpoint(
            tmp_path / "heads.pt", model={"builder": "zoo", "name": name,
                                          "kwargs": {"num_classes": 3, "in_channels": 3, "padding": "same"}},
            state_dict=m.state_dict(), patch_size=[10, 10], pad_mode="reflect", pad_value=0.0, in_channels=3,
            num_classes=3, class_names=["a", "b", "c"], palette=None, mean=[0.5] * 3, std=[0.25] * 3,
            ignore_index=255, mode="dense", output_stride=1), m
    finally:
        zoo.registry.unregister(name)


def test_inference_labels_with_the_chosen_head(two_heads_checkpoint, tmp_path):
    import numpy as np
    from PIL import Image

    from fcnseg.infer import InferenceSettings, load_predictor, run_inference
    ck, _ = two_heads_checkpoint
    first = load_predictor(ck, device="cpu", dtype=torch.float64)
    box = load_predictor(ck, device="cpu", dtype=torch.float64, head="box")
    assert (first.num_classes, box.num_classes) == (3, 4)
    x = torch.randn(1, 3, 7, 8, dtype=torch.float64)
    assert first.dense(x).shape == (1, 3, 7, 8) and box.dense(x).shape == (1, 4, 7, 8)
    check_dense(box.model, x)                                      # the predictor's own reference
    with pytest.raises(ValueError, match=r"head='boxes' is not an output.*\['prob', 'box'\]"):
        load_predictor(ck, device="cpu", head="boxes")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (9, 11, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    run_inference(InferenceSettings(checkpoint=str(ck), input=str(tmp_path / "a.png"), output=str(out),
                                    device="cpu", save_scores=True, head="box", precision="fp32"))
    scores = np.load(next(out.rglob("*.scores.npy")))
    assert scores.shape == (4, 9, 11)


@pytest.mark.parametrize("tile_size", [0, 4])
def test_inference_saves_every_heads_scores(two_heads_checkpoint, tmp_path, tile_size):
    import numpy as np
    from PIL import Image

    from fcnseg.infer import InferenceSettings, run_inference
    ck, _ = two_heads_checkpoint
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (9, 11, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    runs = {}
    for head in ("prob", "box", "all"):
        out = tmp_path / head
        run_inference(InferenceSettings(checkpoint=str(ck), input=str(tmp_path / "a.png"), output=str(out),
                                        device="cpu", save_scores=True, head=head, precision="fp32",
                                        tile_size=tile_size))
        scores = np.load(next(out.rglob("*.scores.npy")))
        labels = [p for p in out.rglob("*.png") if ".overlay" not in p.name]
        runs[head] = scores, np.array(Image.open(labels[0]))
    scores, labels = runs["all"]
    assert scores.shape == (7, 9, 11)                            # prob (3) then box (4), in head order
    np.testing.assert_array_equal(scores[:3], runs["prob"][0])
    np.testing.assert_array_equal(scores[3:], runs["box"][0])
    np.testing.assert_array_equal(labels, runs["prob"][1])       # labelled with the first head
