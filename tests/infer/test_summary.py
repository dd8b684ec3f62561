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


def test_journals_stream_rows_and_merge_across_ranks(tmp_path):
    a, b = _rows()
    j0 = summ.Journal(tmp_path, 0)
    j0.append(a)
    # appended and flushed: readable while the run goes on (a crash loses nothing written)
    assert summ.read_journal(summ.journal_path(tmp_path, 0)) == [a]
    j0.close()
    with pytest.raises(RuntimeError, match="rank 1 wrote no summary journal"):
        summ.merge_journals(tmp_path, 2)
    j1 = summ.Journal(tmp_path, 1)
    j1.append(b)
    j1.close()
    (tmp_path / ".summary.rank5.jsonl").write_text("")  # left by an earlier run with more ranks
    assert summ.merge_journals(tmp_path, 2) == [a, b]
    assert not list(tmp_path.iterdir())


def test_a_killed_ranks_journal_still_lists_every_finished_file(tmp_path):
    """SIGKILL in the middle of a write leaves half a line at the end: the merge keeps
    every complete row and drops only that half line."""
    rows = [summ.row(f"im{i}.png", "ok", output=f"im{i}.png", height=4, width=4) for i in range(3)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    summ.journal_path(tmp_path, 0).write_text(text + json.dumps(summ.row("cut.png", "ok"))[:17])
    assert summ.merge_journals(tmp_path, 1) == rows
    summ.journal_path(tmp_path, 0).write_text("not json\n" + text)  # damage in the middle is an error
    with pytest.raises(ValueError, match="line 1 is not a summary row"):
        summ.read_journal(summ.journal_path(tmp_path, 0))
