"""What a run leaves behind (fcnseg.train.report): the tables and metrics.json."""
import json
import math

from fcnseg.train import report


def test_tables_name_absent_classes_and_json_has_no_nan(tmp_path):
    metrics = {"per_class_iou": [0.5, math.nan], "miou": 0.5, "pixel_acc": 0.75}
    table = report.iou_table(metrics, ["road", "sky"])
    assert "road" in table and "0.5000" in table and "absent" in table and "mean IoU" in table
    acc = {"per_class_accuracy": [1.0, 0.0], "accuracy": 0.5, "mean_class_accuracy": 0.5}
    assert "mean class accuracy" in report.accuracy_table(acc, ["a", "b"])
    report.write_json(tmp_path / "m.json", metrics)
    assert json.loads((tmp_path / "m.json").read_text())["per_class_iou"] == [0.5, None]
