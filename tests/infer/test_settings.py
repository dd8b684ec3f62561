"""fcnseg.infer.settings: conf/infer.yaml agrees with the dataclass key by key, and every
impossible value is refused with a SettingsError that names the key."""
import pytest
import yaml

from fcnseg.infer import InferenceSettings
from fcnseg.settings import SettingsError, defaults

from helpers import ROOT

REQUIRED = {"checkpoint": "c.pt", "input": "in", "output": "out"}


def test_yaml_holds_every_key_with_the_dataclass_default():
    doc = yaml.safe_load((ROOT / "conf" / "infer.yaml").read_text())
    doc.pop("defaults"), doc.pop("hydra")
    want = defaults(InferenceSettings)
    assert set(doc) == set(want) | set(REQUIRED)
    assert {k: doc[k] for k in want} == want
    assert all(doc[k] == "???" for k in REQUIRED)
    assert doc["dist_timeout_s"] == InferenceSettings(**REQUIRED).dist_timeout_s


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_device_vocabulary(device):
    assert InferenceSettings(**REQUIRED, device=device).device == device


@pytest.mark.parametrize("key,value", [
    ("device", "gpu"), ("device", "cuda:x"), ("batch_size", 0), ("output_stride", 1.5),
    ("tile_size", -1), ("memory_mb", 0), ("precision", "half"), ("channels_last", "no"),
    ("summary", ["xml"]), ("summary", []), ("region", [1, 2, 3]), ("overlay_alpha", 2.0),
    ("read_workers", -1), ("read_ahead", 0), ("dist_timeout_s", 0), ("check", "maybe")])
def test_impossible_values_name_their_key(key, value):
    with pytest.raises(SettingsError) as info:
        InferenceSettings(**REQUIRED, **{key: value})
    assert info.value.param == key


def test_from_dict_refuses_unknown_and_missing_keys():
    with pytest.raises(SettingsError, match="tile_sise: unknown setting") as info:
        InferenceSettings.from_dict({**REQUIRED, "tile_sise": 3})
    assert info.value.param == "tile_sise"
    with pytest.raises(SettingsError, match="output: required"):
        InferenceSettings.from_dict({"checkpoint": "c.pt", "input": "in"})
    with pytest.raises(SettingsError, match="input: required"):
        InferenceSettings.from_dict({**REQUIRED, "input": "???"})  # Hydra's missing value
    s = InferenceSettings.from_dict({**REQUIRED, "device": "cuda:0", "tile_size": 0})
    assert (s.device, s.tile_size, s.workers >= 1) == ("cuda:0", 0, True)
