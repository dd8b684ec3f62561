"""tools/verify.py: the user-facing equivalence check, composed from its real config."""
import importlib.util
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import fcnseg
from fcnseg import zoo

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("fcnseg_verify_tool", ROOT / "tools" / "verify.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "verify"), version_base="1.3"):
        return compose(config_name="verify", overrides=list(overrides))


@pytest.mark.parametrize("overrides", [[], ["model=lenet5", "in_channels=1", "pixels=all", "dtype=float32"],
                                       ["model=resnet18", "width_mult=0.125", "output_stride=32"]])
def test_verify_passes(overrides, capsys):
    assert _tool().verify(_cfg(*overrides))
    assert "PASS" in capsys.readouterr().out


def test_verify_reports_fail_with_impossible_tolerance(capsys):
    assert not _tool().verify(_cfg("tolerance=-1"))
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.names())
def test_verify_every_zoo_name(name):
    c = 1 if name in ("lenet5", "membrane_net") else 3
    probe = zoo.create(name, num_classes=7, in_channels=c, width_mult=0.0625)
    s = fcnseg.geometry(probe).total_stride[0]
    cfg = _cfg(f"model={name}", f"in_channels={c}", "width_mult=0.0625", f"output_stride={s}",
               f"size=[{s + 1},{s + 1}]", "pixels=all")
    assert _tool().verify(cfg)
