"""What every run leaves besides checkpoints: its messages through logging (the final IoU
table included), per-step scalars in steps.csv, kept to the resumed step on resume, and in
TensorBoard event files with logger=tensorboard; a second run decodes no file of the data
scan (the scan cache)."""
import csv
import logging

import pytest

import fcnseg.train

from helpers import compose, tiny_overrides


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_messages_go_through_logging_and_scalars_to_steps_csv(scenes, tmp_path, caplog):
    over = tiny_overrides(scenes, "trainer.epochs=null", "trainer.steps=4", "trainer.eval_every=2",
                          "trainer.grid_images=0")
    with caplog.at_level(logging.INFO, logger="fcnseg.train"):
        metrics = fcnseg.train.run(compose(over), tmp_path)
    text = caplog.text
    for line in ("step cost (", "first step:", "step 4/4: loss", "mean IoU", "pixel accuracy",
                 f"{metrics['miou']:.4f}", "wrote metrics.json"):
        assert line in text, line
    table = [r.getMessage() for r in caplog.records if r.getMessage().startswith("class  ")]
    assert len(table) == 1 and "background" in table[0] and "disc" in table[0]  # the whole table, one record
    assert {r.name for r in caplog.records} >= {"fcnseg.train.training_run", "fcnseg.train.cost",
                                                "fcnseg.train.segmentation"}
    rows = _rows(tmp_path / "steps.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert all(float(r["loss"]) > 0 and float(r["lr"]) > 0 and float(r["images_per_s"]) > 0 for r in rows)

    # a resumed run keeps the rows up to its step and appends its own
    from fcnseg.train.report import ScalarLog
    ScalarLog(tmp_path / "steps.csv", keep_until=2)
    assert [r["step"] for r in _rows(tmp_path / "steps.csv")] == ["1", "2"]
    ScalarLog(tmp_path / "steps.csv", keep_until=0)  # a fresh run starts the file anew
    assert _rows(tmp_path / "steps.csv") == []


def test_logger_tensorboard_writes_the_loss_and_the_validation(scenes, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    over = tiny_overrides(scenes, "trainer.epochs=null", "trainer.steps=2", "trainer.eval_every=2",
                          "trainer.grid_images=0", "logger=tensorboard")
    metrics = fcnseg.train.run(compose(over), tmp_path)
    assert list(tmp_path.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2]
    csv_loss = [float(r["loss"]) for r in _rows(tmp_path / "steps.csv")]
    assert [e.value for e in loss] == pytest.approx(csv_loss, rel=1e-6)  # float32 in the event file
    assert {"train/lr", "train/images_per_s", "val/miou", "val/pixel_acc"} <= set(events.Tags()["scalars"])
    assert events.Scalars("val/miou")[-1].value == pytest.approx(metrics["miou"], rel=1e-6)


def test_logger_tensorboard_without_the_package_names_the_extra(scenes, tmp_path, monkeypatch):
    import sys

    from fcnseg.extras import MissingExtraError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    over = tiny_overrides(scenes, "trainer.steps=1", "logger=tensorboard")
    with pytest.raises(MissingExtraError, match=r"fcnseg\[tensorboard\]"):
        fcnseg.train.run(compose(over), tmp_path)


def test_a_second_run_decodes_no_file_of_the_scan(scenes, monkeypatch):
    """A resume (or the other ranks of a job) finds every file in the data root's scan cache."""
    from fcnseg.data import FolderDataset
    from fcnseg.train.segmentation import build_datasets
    settings = fcnseg.train.TrainSettings.from_dict(compose(tiny_overrides(scenes)))
    first = build_datasets(settings.data, settings.aug)
    decoded = []
    load = FolderDataset.load
    monkeypatch.setattr(FolderDataset, "load", lambda self, i: decoded.append(i) or load(self, i))
    again = build_datasets(settings.data, settings.aug)
    assert decoded == []
    assert (again[2] == first[2]).all()  # the training split's pixels per class
