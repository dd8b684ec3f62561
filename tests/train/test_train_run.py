"""The real conf/train.yaml, composed with Hydra, shrunk, run on CPU."""
import json
import signal

import pytest
import torch

import fcnseg
import fcnseg.train
import fcnseg.train.loop as loop
import fcnseg.zoo
from fcnseg.data import DatasetError, build_dataset
from fcnseg.models import load_checkpoint, model_from_checkpoint
from fcnseg.train import evaluate

from helpers import compose, make_scenes, tiny_overrides

CKPT_KEYS = {"model", "state_dict", "patch_size", "pad_mode", "pad_value", "in_channels",
             "num_classes", "class_names", "palette", "mean", "std", "ignore_index",
             "optimizer", "scheduler", "scaler", "epoch", "step", "rng"}


@pytest.fixture(scope="module")
def dense_run(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("dense_run")
    cfg = compose(tiny_overrides(scenes, "trainer.epochs=2", "model.pad_mode=replicate"))
    return out, fcnseg.train.run(cfg, out)


def test_run_writes_metrics_reports_and_checkpoints(dense_run):
    out, metrics = dense_run
    for f in ("metrics.json", "metrics.csv", "curves.png", "val_grid.png", "last.pt", "best.pt"):
        assert (out / f).stat().st_size > 0, f
    js = json.loads((out / "metrics.json").read_text())
    assert len(js["per_class_iou"]) == 3 and js["mode"] == "dense"
    assert js["miou"] == pytest.approx(metrics["miou"]) and 0 <= js["pixel_acc"] <= 1
    assert len(js["epoch_times_s"]) == 2
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,train_loss,val_miou") and len(rows) == 3
    raw = torch.load(out / "last.pt", weights_only=True)  # no pickled code in checkpoints
    assert CKPT_KEYS <= set(raw) and raw["epoch"] == 2 and raw["step"] == 0
    side = fcnseg.zoo.spec("patchnet").input_size()  # the default model's computed patch
    assert raw["patch_size"] == [side, side] and raw["pad_mode"] == "replicate"
    assert raw["class_names"] == ["background", "square", "disc"] and raw["in_channels"] == 1
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_checkpoint_alone_rebuilds_the_evaluated_model(dense_run, scenes):
    out, _ = dense_run
    ck = load_checkpoint(out / "last.pt")
    model, info = model_from_checkpoint(ck)
    dense = fcnseg.densify(model, info["patch_size"], pad_mode=info["pad_mode"],
                           pad_value=info["pad_value"])
    ds = build_dataset("folder", scenes, "val")
    loader = torch.utils.data.DataLoader(ds, 2, collate_fn=loop._collate)
    again = evaluate(dense, loader, info["num_classes"], info["ignore_index"]).compute()
    assert again["miou"] == pytest.approx(ck["metrics"]["miou"], abs=1e-12)
    assert again["per_class_iou"] == pytest.approx(ck["metrics"]["per_class_iou"], nan_ok=True)


def test_patch_mode_and_smp_baseline_run(scenes, tmp_path):
    m = fcnseg.train.run(compose(tiny_overrides(
        scenes, "trainer.mode=patch", "trainer.sample_fraction=0.05", "trainer.output_stride=1",
        "optim=sgd", "sched=poly", "loss=focal", "trainer.max_train_batches=1")), tmp_path / "p")
    assert json.loads((tmp_path / "p" / "metrics.json").read_text())["mode"] == "patch"
    assert 0 <= m["miou"] <= 1
    m = fcnseg.train.run(compose(tiny_overrides(
        scenes, "model=smp_unet", "trainer.output_stride=1", "+model.kwargs.encoder_depth=3",
        "+model.kwargs.decoder_channels=[16,8,4]", "trainer.max_train_batches=1", zoo=False)),
        tmp_path / "u")
    ck = load_checkpoint(tmp_path / "u" / "best.pt")
    assert ck["patch_size"] is None and ck["model"]["builder"] == "smp"
    model, info = model_from_checkpoint(ck)
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 3, 32, 32)


def _interrupt_at(monkeypatch, call):
    """Deliver SIGTERM to this process during the call-th training step."""
    real, n = loop.sampled_logits, [0]

    def wrapped(*a, **k):
        n[0] += 1
        if n[0] == call:
            signal.raise_signal(signal.SIGTERM)
        return real(*a, **k)
    monkeypatch.setattr(loop, "sampled_logits", wrapped)


def test_sigterm_checkpoints_and_resume_ends_with_the_same_weights(scenes, tmp_path, monkeypatch):
    over = tiny_overrides(scenes, "trainer.epochs=2", "trainer.deterministic=true",
                          "trainer.batch_size=2", "trainer.grid_images=0")
    whole = fcnseg.train.run(compose(over), tmp_path / "whole")
    _interrupt_at(monkeypatch, 4)  # step 1 of epoch 2 (3 steps per epoch)
    r = fcnseg.train.run(compose(over), tmp_path / "cut")
    assert r == {"interrupted": True, "epoch": 1, "step": 1}
    ck = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (ck["epoch"], ck["step"]) == (1, 1)
    monkeypatch.undo()
    resumed = fcnseg.train.run(compose(over + ["resume=true"]), tmp_path / "cut")
    a = load_checkpoint(tmp_path / "whole" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "cut" / "last.pt")["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["miou"] == whole["miou"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(scenes, tmp_path, monkeypatch):
    real, n = loop.sampled_logits, [0]

    def nan_in_epoch_2(*a, **k):
        n[0] += 1
        out = real(*a, **k)
        return out * float("nan") if n[0] > 2 else out
    monkeypatch.setattr(loop, "sampled_logits", nan_in_epoch_2)
    with pytest.raises(fcnseg.train.TrainingError, match="loss became nan.*last good checkpoint"):
        fcnseg.train.run(compose(tiny_overrides(scenes, "trainer.epochs=2")), tmp_path)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_bad_data_fails_before_training_naming_the_file(tmp_path):
    root = make_scenes(tmp_path / "bad", n_train=2, n_val=1)
    (root / "train" / "masks" / "s01.png").unlink()
    with pytest.raises(DatasetError, match="s01"):
        fcnseg.train.run(compose(tiny_overrides(root)), tmp_path / "run")
    assert not (tmp_path / "run" / "last.pt").exists()
