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


def test_verify_settings_match_their_yaml():
    import yaml

    from fcnseg.settings import SettingsError, defaults
    tool = _tool()
    yaml_values = yaml.safe_load((ROOT / "conf" / "verify" / "verify.yaml").read_text())
    yaml_values = {k: v for k, v in yaml_values.items() if k not in ("defaults", "hydra")}
    assert yaml_values == defaults(tool.VerifySettings)
    assert tool.settings_from(_cfg()) == tool.VerifySettings()
    with pytest.raises(SettingsError, match="unknown setting"):
        tool.settings_from({"modle": "toy"})
    with pytest.raises(SettingsError, match="precision: got 'half'"):
        tool.VerifySettings(precision="half")


def test_verify_reports_reduced_precision_by_labels_never_as_exact(capsys):
    tool = _tool()
    with pytest.raises(ValueError, match="set dtype=float32"):
        tool.verify(_cfg("precision=bf16"))
    assert tool.verify(_cfg("precision=bf16", "dtype=float32", "pixels=all"))
    out = capsys.readouterr().out
    assert "bf16 is reduced precision, not exact: labels agree" in out and "PASS (label agreement, bf16)" in out
    assert "tolerance" not in out


def test_verify_image_uses_the_library_normalisation(tmp_path, monkeypatch):
    from fcnseg.data.base import default_mean_std

    from helpers import random_image, save
    tool = _tool()
    path = save(tmp_path / "x.png", random_image(20, 18))
    seen = {}
    import fcnseg.data.io as io
    real = io.prepare_image
    monkeypatch.setattr(io, "prepare_image", lambda img, c, mean, std: seen.update(mean=mean, std=std)
                        or real(img, c, mean, std))
    x = tool.load_input(tool.VerifySettings(image=str(path)), 3, {}, __import__("torch").float64)
    assert x.shape == (1, 3, 20, 18) and (seen["mean"], seen["std"]) == default_mean_std(3)


def test_verify_reports_fail_with_impossible_tolerance(capsys):
    assert not _tool().verify(_cfg("tolerance=-1"))
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.names())
def test_verify_every_zoo_name(name):
    c = 1 if name in ("lenet5", "membrane_net") else 3
    probe = zoo.create(name, num_classes=7, in_channels=c, width_mult=0.0625)
    s = fcnseg.geometry_of(probe).total_stride[0]
    cfg = _cfg(f"model={name}", f"in_channels={c}", "width_mult=0.0625", f"output_stride={s}",
               f"size=[{s + 1},{s + 1}]", "pixels=all")
    assert _tool().verify(cfg)
