"""Classifiers with several outputs: the same structure of dense maps, each head exact."""
import pytest
import torch
from torch import nn

import fcnseg
from helpers import check_dense
from mtcnn_like import Head, grads_match


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
