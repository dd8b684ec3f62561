"""fcnseg.data.scan: the dataset scan's cache. A second scan decodes nothing, a changed,
added or removed file costs exactly its own decode, other settings rescan, a bad file is
never cached, and the cached report (and class count) equals a fresh scan."""
from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from fcnseg.data import DatasetError, FolderDataset, ScanCache, validate_dataset
from fcnseg.data.scan import CACHE_NAME

from helpers import save_gray


@pytest.fixture
def decoded(monkeypatch):
    """The image paths FolderDataset.load decodes (from the scan's threads too)."""
    seen, lock = [], threading.Lock()
    load = FolderDataset.load

    def counting(self, i):
        with lock:
            seen.append(self.samples[i].image.name)
        return load(self, i)

    monkeypatch.setattr(FolderDataset, "load", counting)
    return seen


def _same(a, b):
    assert (a.num_samples, a.checked, a.ignore_pixels, a.image_sizes) == \
        (b.num_samples, b.checked, b.ignore_pixels, b.image_sizes)
    np.testing.assert_array_equal(a.class_pixels, b.class_pixels)


def _scan(root, split="train", **kw):
    with ScanCache(root) as cache:
        return validate_dataset(FolderDataset(root, split, num_classes=4, **kw), cache=cache)


def test_second_scan_decodes_nothing_and_equals_a_fresh_scan(folder_root, decoded):
    first = _scan(folder_root)
    assert sorted(decoded) == ["s0.png", "s1.png", "s2.png"]
    assert (folder_root / CACHE_NAME).is_file()
    decoded.clear()
    again = _scan(folder_root)
    assert decoded == []
    _same(again, first)
    _same(again, validate_dataset(FolderDataset(folder_root, "train", num_classes=4)))  # no cache


def test_a_changed_file_rescans_exactly_that_file(folder_root, decoded):
    _scan(folder_root)
    decoded.clear()
    mask = folder_root / "train/masks/s1.png"
    st = os.stat(mask)
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched
    _scan(folder_root)
    assert decoded == ["s1.png"]
    decoded.clear()
    save_gray(mask, np.full((12, 10), 3, np.uint8))  # new content: the report follows it
    got = _scan(folder_root)
    assert decoded == ["s1.png"]
    assert got.class_pixels[3] >= 12 * 10
    _same(got, validate_dataset(FolderDataset(folder_root, "train", num_classes=4)))


def test_added_and_removed_files(folder_root, decoded):
    _scan(folder_root)
    decoded.clear()
    save_gray(folder_root / "train/images/s3.png", np.zeros((12, 10), np.uint8))
    save_gray(folder_root / "train/masks/s3.png", np.ones((12, 10), np.uint8))
    for p in ("images", "masks"):
        (folder_root / f"train/{p}/s0.png").unlink()
    got = _scan(folder_root)
    assert decoded == ["s3.png"]
    _same(got, validate_dataset(FolderDataset(folder_root, "train", num_classes=4)))
    entries = json.loads((folder_root / CACHE_NAME).read_text())["entries"]
    assert not any("s0.png" in k for k in entries) and any("s3.png" in k for k in entries)


def test_other_settings_rescan(folder_root, decoded):
    _scan(folder_root)
    decoded.clear()
    _scan(folder_root, in_channels=1)  # the images convert differently: another result
    assert len(decoded) == 3
    decoded.clear()
    _scan(folder_root)  # one entry per sample, of the latest settings: back again rescans
    assert len(decoded) == 3


def test_the_splits_share_one_cache(folder_root, decoded):
    _scan(folder_root, "train")
    _scan(folder_root, "val")
    decoded.clear()
    _scan(folder_root, "train")
    _scan(folder_root, "val")
    assert decoded == []


def test_a_bad_file_is_never_cached(folder_root, decoded):
    image = folder_root / "train/images/s1.png"
    good = image.read_bytes()
    image.write_bytes(good[:100])
    with pytest.raises(DatasetError, match="s1.png: truncated or corrupt"):
        _scan(folder_root)
    decoded.clear()
    with pytest.raises(DatasetError, match="s1.png: truncated or corrupt"):
        _scan(folder_root)
    assert decoded == ["s1.png"]  # the good files were kept from the failed scan
    image.write_bytes(good)
    decoded.clear()
    _scan(folder_root)
    assert decoded == ["s1.png"]


def test_unwritable_root_falls_back(folder_root, tmp_path_factory, decoded):
    (folder_root / CACHE_NAME).mkdir()  # the root's cache cannot be written (nor read)
    fallback = tmp_path_factory.mktemp("cache") / "scan.json"
    ds = FolderDataset(folder_root, "train", num_classes=4)
    cache = ScanCache(folder_root, fallback=fallback)
    validate_dataset(ds, cache=cache)
    assert cache.save() == fallback and fallback.is_file()
    assert cache.save() is None  # nothing new to write
    decoded.clear()
    validate_dataset(ds, cache=ScanCache(folder_root, fallback=fallback))
    assert decoded == []


def test_an_unreadable_cache_is_rebuilt(folder_root, decoded):
    (folder_root / CACHE_NAME).write_text("{not json")
    _scan(folder_root)
    assert len(decoded) == 3
    assert json.loads((folder_root / CACHE_NAME).read_text())["format"] == 1


def test_progress_bar_on_stderr(folder_root, capsys):
    validate_dataset(FolderDataset(folder_root, "train", num_classes=4), progress=True)
    assert "scan" in capsys.readouterr().err


def test_class_count_from_the_masks_reads_each_mask_once(folder_root, monkeypatch):
    import fcnseg.data.folder as folder
    read = []
    read_mask = folder.read_mask
    monkeypatch.setattr(folder, "read_mask", lambda p: read.append(p.name) or read_mask(p))
    fresh = FolderDataset(folder_root, "train").num_classes  # no cache
    read.clear()
    with ScanCache(folder_root) as cache:
        assert FolderDataset(folder_root, "train", scan_cache=cache).num_classes == fresh
    assert len(read) == 5  # three train masks and two val masks
    read.clear()
    with ScanCache(folder_root) as cache:
        assert FolderDataset(folder_root, "val", scan_cache=cache).num_classes == fresh
    assert read == []
    save_gray(folder_root / "val/masks/s1.png", np.full((12, 10), 6, np.uint8))
    with ScanCache(folder_root) as cache:
        assert FolderDataset(folder_root, "train", scan_cache=cache).num_classes == 7
    assert read == ["s1.png"]
