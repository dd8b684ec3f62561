"""All-or-nothing writes and the temporaries killed runs leave."""

import pytest

from fcnseg import runtime


def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    runtime.write_text_atomic(target, "old")
    assert target.read_text() == "old"
    with pytest.raises(KeyboardInterrupt):
        with runtime.atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.startswith(".a.txt.")
            tmp.write_text("half")
            raise KeyboardInterrupt  # a kill mid-write
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]  # no temporary left
    runtime.write_text_atomic(target, "new")
    assert target.read_text() == "new"


def test_remove_stale_temps_only_touches_this_files_temporaries(tmp_path):
    target = tmp_path / "a.png"
    stale = [tmp_path / f".a.png.{pid}{runtime.TMP_SUFFIX}" for pid in (11, 12)]
    keep = [tmp_path / ".b.png.11.fcnseg-tmp", tmp_path / "a.png.txt", tmp_path / ".a.png"]
    for p in stale + keep:
        p.write_text("x")
    assert runtime.remove_stale_temps(target) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)
    assert runtime.remove_stale_temps(tmp_path / "missing" / "a.png") == 0
