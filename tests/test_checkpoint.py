"""fcnseg.checkpoint: recipes, checkpoint files (atomic, weights_only, the training format)
and models rebuilt from them, without the training code."""
import pickle
import subprocess
import sys

import pytest
import torch

from fcnseg import checkpoint, runtime

from helpers import toy_model, write_checkpoint


def test_model_spec_adds_the_data_counts_per_builder():
    zoo = checkpoint.model_spec({"builder": "zoo", "name": "toy", "kwargs": {"width_mult": 0.5}}, 7, 2)
    assert zoo == {"builder": "zoo", "name": "toy",
                   "kwargs": {"width_mult": 0.5, "num_classes": 7, "in_channels": 2}}
    smp = checkpoint.model_spec({"builder": "smp", "name": "Unet"}, 7, 2)
    assert smp["kwargs"] == {"classes": 7, "in_channels": 2}
    with pytest.raises(ValueError, match=r"model builder must be one of \('zoo', 'smp'\), got 'timm'"):
        checkpoint.model_spec({"builder": "timm", "name": "x"}, 7, 2)


def test_build_model_from_a_zoo_recipe():
    spec = checkpoint.model_spec({"builder": "zoo", "name": "toy", "kwargs": {"width_mult": 0.5}}, 7, 2)
    m = checkpoint.build_model(spec)
    P, Q = m.patch_size
    assert m(torch.randn(3, 2, P, Q)).flatten(1).shape == (3, 7)  # 7 classes, not a default
    with pytest.raises(ValueError, match="builder"):
        checkpoint.build_model({"builder": "timm", "name": "x", "kwargs": {}})


def test_checkpoint_round_trip_rebuilds_the_same_network(tmp_path):
    path = write_checkpoint(tmp_path / "toy.pt", num_classes=4, in_channels=2, pad_mode="replicate")
    raw = torch.load(path, weights_only=True)  # tensors and plain containers only
    assert raw["format"] == checkpoint.FORMAT and raw["version"] == checkpoint.VERSION
    model, info = checkpoint.model_from_checkpoint(path)
    assert not model.training
    assert info["patch_size"] == tuple(model.patch_size) and isinstance(info["patch_size"], tuple)
    assert (info["num_classes"], info["in_channels"], info["pad_mode"]) == (4, 2, "replicate")
    ref = toy_model(4, 2)  # write_checkpoint's network, built again with the same seed
    x = torch.randn(5, 2, *model.patch_size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.pt"]  # no temporary left


def test_a_checkpoint_written_by_torch_save_in_the_same_format_loads(tmp_path):
    """The format is the dict, not this module's code: files written before it existed
    (plain torch.save of {format, version, ...}) still load."""
    m = toy_model(3, 1)
    spec = {"builder": "zoo", "name": "toy",
            "kwargs": {"num_classes": 3, "in_channels": 1, "width_mult": 0.5}}
    torch.save({"format": "fcnseg-checkpoint", "version": 1, "model": spec,
                "state_dict": m.state_dict(), "patch_size": list(m.patch_size), "pad_mode": "constant",
                "pad_value": 0.0, "in_channels": 1, "num_classes": 3}, tmp_path / "old.pt")
    model, info = checkpoint.model_from_checkpoint(tmp_path / "old.pt")
    assert info["patch_size"] == tuple(m.patch_size) and info["class_names"] is None
    x = torch.randn(2, 1, *m.patch_size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), m(x), rtol=0, atol=0)


class _Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_load_refuses_missing_foreign_truncated_and_pickled_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; train one with tools/train.py"):
        checkpoint.load_checkpoint(tmp_path / "none.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an fcnseg checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "foreign.pt")
    good = write_checkpoint(tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="not a readable fcnseg checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": checkpoint.FORMAT, "x": _Evil()}, protocol=2))
    with pytest.raises(ValueError, match="not a readable fcnseg checkpoint"):  # weights_only refuses
        checkpoint.load_checkpoint(tmp_path / "evil.pt")


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = write_checkpoint(tmp_path / "last.pt")
    before = path.read_bytes()
    real = torch.save

    def dies_mid_write(obj, f, *a, **k):
        real({"partial": torch.zeros(1)}, f)
        raise KeyboardInterrupt  # killed after some bytes reached the disk
    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, model={}, state_dict={})
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(f"*{runtime.TMP_SUFFIX}"))


def test_inference_and_checkpoints_do_not_import_training():
    """The layering: fcnseg.infer depends on fcnseg.checkpoint and fcnseg.runtime, not on fcnseg.train."""
    code = ("import sys, fcnseg.infer, fcnseg.checkpoint, fcnseg.runtime; "
            "bad = sorted(m for m in sys.modules if m.startswith('fcnseg.train')); "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
