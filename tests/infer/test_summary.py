"""fcnseg.infer.summary: the per-file table as CSV/JSON, merged across ranks."""
import json

import pytest

from fcnseg.infer import summary as summ


def _rows():
    return [summ.row("b.png", "failed", error="broken"),
            summ.row("a.png", "ok", output="a.png", height=3, width=4, seconds=0.123456,
                     max_abs_diff=1e-7)]


def test_summary_sorted_with_extra_columns(tmp_path):
    files = summ.write_summary(tmp_path, _rows(), ("csv", "json"))
    assert [f.name for f in files] == ["summary.csv", "summary.json"]
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert lines[0] == ",".join(summ.COLUMNS + ["max_abs_diff"])
    assert lines[1].startswith("a.png,a.png,3,4,0.1235,ok,,") and lines[2].startswith("b.png,,,,")
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["counts"] == {"ok": 1, "skipped": 0, "failed": 1}
    assert [r["file"] for r in doc["files"]] == ["a.png", "b.png"]
    with pytest.raises(ValueError, match="summary formats"):
        summ.write_summary(tmp_path, _rows(), ("xml",))


def test_partials_of_every_rank_merge_and_are_removed(tmp_path):
    a, b = _rows()
    summ.write_partial(tmp_path, 0, [a])
    with pytest.raises(RuntimeError, match="rank 1 wrote no partial summary"):
        summ.merge_partials(tmp_path, 2)
    summ.write_partial(tmp_path, 1, [b])
    assert summ.merge_partials(tmp_path, 2) == [a, b]
    assert not list(tmp_path.iterdir())
