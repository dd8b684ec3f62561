"""The rule table: every layer kind the tracer's `describe` can emit has a conversion rule."""
import ast
import inspect

import pytest
from torch import nn

import fcnseg
from fcnseg.convert import layers
from fcnseg.convert.errors import UnsupportedLayerError
from fcnseg.convert.layers import KINDS_WITHOUT_RULE, LAYER_KINDS, Layer
from fcnseg.convert.rules import RULES


def kinds_in_describe_source():
    """The kind of every Layer(...) that fcnseg/convert/layers.py constructs."""
    tree = ast.parse(inspect.getsource(layers))
    return {call.args[0].value for call in ast.walk(tree)
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Layer"
            and call.args and isinstance(call.args[0], ast.Constant)}


def test_every_kind_has_a_rule():
    missing = set(LAYER_KINDS) - set(KINDS_WITHOUT_RULE) - set(RULES)
    assert not missing, f"layer kinds without a conversion rule in fcnseg.convert.rules.RULES: {sorted(missing)}"
    assert set(RULES) <= set(LAYER_KINDS), f"rules for unknown kinds: {sorted(set(RULES) - set(LAYER_KINDS))}"


def test_describe_emits_only_listed_kinds():
    emitted = kinds_in_describe_source()
    assert {"conv", "pool", "linear", "getitem"} <= emitted          # the scan reads the real source
    assert emitted <= set(LAYER_KINDS), f"describe emits kinds not in LAYER_KINDS: {sorted(emitted - set(LAYER_KINDS))}"


def test_an_unlisted_kind_fails_loudly():
    with pytest.raises(AssertionError, match="LAYER_KINDS"):
        Layer("deformable", "layer0")


def test_tensor_shape_arithmetic_is_refused_with_the_layer_name():
    class Halve(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc((self.conv(x) // 2).flatten(1))

    with pytest.raises(UnsupportedLayerError, match="floordiv.*no dense form"):
        fcnseg.densify(Halve().double(), (3, 3))
