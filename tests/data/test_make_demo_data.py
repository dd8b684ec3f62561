from __future__ import annotations

import gzip
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from fcnseg.data import FolderDataset, read_image, read_mask, validate_dataset

_TOOL = Path(__file__).resolve().parents[2] / "tools" / "make_demo_data.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("make_demo_data", _TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fake_source(tmp_path: Path) -> Path:
    """Fashion-MNIST-shaped files: train items are solid 200 blobs, t10k items solid 100 blobs."""
    src = tmp_path / "src"
    src.mkdir()
    for prefix, value, n in (("train", 200, 30), ("t10k", 100, 20)):
        imgs = np.zeros((n, 28, 28), np.uint8)
        imgs[:, 4:24, 6:22] = value
        _write_idx(src / f"{prefix}-images-idx3-ubyte.gz", imgs)
        _write_idx(src / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return src


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(fake_source, tmp_path):
    tool = _load_tool()
    args = ["--source", str(fake_source), "--n-train", "6", "--n-val", "3", "--size", "64"]
    tool.main(args + ["--out", str(tmp_path / "a")])
    tool.main(args + ["--out", str(tmp_path / "b")])
    tool.main(args + ["--out", str(tmp_path / "c"), "--seed", "1"])
    a, b, c = (_tree_bytes(tmp_path / d) for d in "abc")
    assert len(a) == 6 * 2 + 3 * 2 + 1 and a == b
    assert a["train/images/000000.png"] != c["train/images/000000.png"]


def test_output_is_a_valid_folder_dataset_with_split_sources(fake_source, tmp_path):
    tool = _load_tool()
    out = tmp_path / "scenes"
    tool.main(["--source", str(fake_source), "--out", str(out), "--n-train", "8", "--n-val", "4", "--size", "64"])
    meta = json.loads((out / "classes.json").read_text())
    assert meta["in_channels"] == 1 and len(meta["names"]) == len(meta["palette"]) == 11
    train, val = FolderDataset(out, "train"), FolderDataset(out, "val")
    assert (len(train), len(val), train.num_classes, train.in_channels) == (8, 4, 11, 1)
    assert train[0]["image"].shape == (1, 64, 64)
    rep = validate_dataset(train)
    assert rep.ignore_pixels == 0 and (rep.class_pixels[1:] > 0).sum() >= 3
    for ds, lo, hi in ((train, 101, 200), (val, 21, 100)):  # garments come from their own split's file
        for i in range(len(ds)):
            img = read_image(ds.samples[i].image)[:, :, 0]
            mask = read_mask(ds.samples[i].mask)
            fg = img[mask > 0]
            assert fg.size > 0 and fg.max() <= hi and np.percentile(fg, 50) >= lo - 1


def test_upstream_layout_hint_when_files_missing(tmp_path):
    tool = _load_tool()
    with pytest.raises(SystemExit, match="zalandoresearch/fashion-mnist"):
        tool.main(["--source", str(tmp_path), "--out", str(tmp_path / "o"), "--n-train", "1", "--n-val", "1"])
