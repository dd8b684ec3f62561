"""What every run leaves besides checkpoints: its messages through logging (the final IoU
table included), per-step scalars in steps.csv, kept to the resumed step on resume."""
import csv
import logging

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
