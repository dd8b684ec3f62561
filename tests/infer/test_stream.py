"""fcnseg.infer.stream and bigtiff: a large image labelled tile by tile into BigTIFF equals the
in-memory path; a crop's interior equals the large image there; a run killed with SIGKILL (or
failing) resumes from its finished tiles and writes the same bytes; the pyramid and the
downsampled overlay."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnseg.data.io import read_image
from fcnseg.data.regions import open_image
from fcnseg.infer import stream
from fcnseg.infer.bigtiff import pyramid_shapes, write_label_pyramid
from fcnseg.infer.model import load_predictor
from fcnseg.infer.outputs import blend_overlay, to_image_size
from fcnseg.infer.tiling import predict_tiled

from helpers import random_image, write_checkpoint

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("zarr")

KINDS = ("labels", "scores", "overlay")


def _paths(folder: Path, stem: str) -> dict[str, Path]:
    return {"labels": folder / f"{stem}.tif", "scores": folder / f"{stem}.scores.tif",
            "overlay": folder / f"{stem}.overlay.png"}


def _tiff(path: Path, image: np.ndarray) -> Path:
    path = path.with_name("in_" + path.name)  # never a result's name
    tifffile.imwrite(path, image[:, :, 0] if image.shape[2] == 1 else image, tile=(32, 32),
                     photometric="rgb" if image.shape[2] == 3 else "minisblack", compression="zlib")
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ck") / "toy.pt")


@pytest.mark.parametrize("stride,tile,channels,dtype", [(1, 24, 3, np.uint8), (2, 30, 1, np.uint16)])
def test_streamed_equals_in_memory_path(tmp_path, ckpt, stride, tile, channels, dtype):
    image = random_image(90, 77, channels, dtype, seed=stride)
    path = _tiff(tmp_path / "a.tif", image)
    pred = load_predictor(ckpt, output_stride=stride)
    paths = _paths(tmp_path, "a")
    with open_image(path) as src:
        stream.label_large_image(pred, src, paths, KINDS, tile_size=tile)
    # the in-memory path: the whole decoded image, untiled, upsampled to the image size
    raw = pred.prepare(read_image(path))
    ref = predict_tiled(pred.dense, raw, 0, transform=pred.transform)
    want = to_image_size(ref.labels.numpy(), 90, 77, stride)
    labels = tifffile.imread(paths["labels"])
    assert labels.shape == (90, 77) and labels.dtype == np.uint8
    assert len(np.unique(want)) > 1 and np.array_equal(labels, want)
    scores = tifffile.imread(paths["scores"])
    assert scores.shape == tuple(ref.scores.shape) and scores.dtype == np.float16
    # tiles sum in another order than the whole image: float32 agrees to rounding, then float16
    np.testing.assert_allclose(scores.astype(np.float32), ref.scores.numpy(), rtol=2e-3, atol=2e-3)
    overlay = np.asarray(Image.open(paths["overlay"]))
    assert np.array_equal(overlay, blend_overlay(read_image(path), want, pred.palette, 0.5))
    assert not stream.work_dir(paths["labels"]).exists()  # the working store is gone


def test_crop_interior_equals_large_image_there(tmp_path, ckpt):
    image = random_image(120, 100, 3, seed=5)
    pred = load_predictor(ckpt, output_stride=2)
    with open_image(_tiff(tmp_path / "big.tif", image)) as src:
        stream.label_large_image(pred, src, _paths(tmp_path, "big"), ["labels"], tile_size=26)
    top, left, h, w = 30, 24, 50, 60  # even offsets: the crop's output grid is the image's
    with open_image(_tiff(tmp_path / "crop.tif", image[top:top + h, left:left + w])) as src:
        stream.label_large_image(pred, src, _paths(tmp_path, "crop"), ["labels"], tile_size=26)
    big, crop = tifffile.imread(tmp_path / "big.tif"), tifffile.imread(tmp_path / "crop.tif")
    m = max(pred.patch_size) // 2 + 2  # beyond the padding's reach (and the nearest-cell rounding)
    assert np.array_equal(crop[m:-m, m:-m], big[top + m:top + h - m, left + m:left + w - m])
    assert not np.array_equal(crop, big[top:top + h, left:left + w])  # the border does differ


class _Stop(Exception):
    pass


def test_failed_run_resumes_from_finished_tiles_same_bytes(tmp_path, ckpt):
    pred = load_predictor(ckpt, output_stride=1)
    path = _tiff(tmp_path / "a.tif", random_image(64, 70, 3, seed=2))
    whole = _paths(tmp_path / "whole", "a")
    with open_image(path) as src:
        stream.label_large_image(pred, src, whole, KINDS, tile_size=16)
    part = _paths(tmp_path / "part", "a")

    def stop_after_five(done, total):
        if done == 5:
            raise _Stop

    with open_image(path) as src, pytest.raises(_Stop):
        stream.label_large_image(pred, src, part, KINDS, tile_size=16, on_tile=stop_after_five)
    assert not any(p.exists() for p in part.values())  # nothing partial looks finished
    seen = []
    with open_image(path) as src:
        stream.label_large_image(pred, src, part, KINDS, tile_size=16, log=seen.append,
                                 on_tile=lambda d, t: seen.append((d, t)))
    assert "5 done before" in seen[0] and seen[1] == (6, 20)  # 15 tiles recomputed, not 20
    for kind in KINDS:
        assert part[kind].read_bytes() == whole[kind].read_bytes(), kind


def test_other_settings_start_over(tmp_path, ckpt):
    pred = load_predictor(ckpt, output_stride=1)
    path = _tiff(tmp_path / "a.tif", random_image(40, 40, 3, seed=4))
    paths = _paths(tmp_path, "a")

    def stop(done, total):
        raise _Stop

    with open_image(path) as src, pytest.raises(_Stop):
        stream.label_large_image(pred, src, paths, ["labels"], tile_size=16, on_tile=stop)
    seen = []
    with open_image(path) as src:  # another tile size: other chunks, the store is not reused
        stream.label_large_image(pred, src, paths, ["labels"], tile_size=20, log=seen.append)
    assert any("starting over" in m for m in seen)
    with open_image(path) as src:
        ref = predict_tiled(pred.dense, src, 0, transform=lambda r: pred.transform(pred.prepare(r)))
    assert np.array_equal(tifffile.imread(paths["labels"]), ref.labels.numpy())


_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from fcnseg.data.regions import open_image
    from fcnseg.infer import stream
    from fcnseg.infer.model import load_predictor
    ckpt, image, out = sys.argv[1:4]
    pred = load_predictor(ckpt, output_stride=1)
    forward = pred.dense.forward_valid
    def slow(x):  # this test's child only: long enough to be killed in the middle
        time.sleep(0.2)
        return forward(x)
    pred.dense.forward_valid = slow
    paths = {k: Path(out) / n for k, n in (("labels", "a.tif"), ("scores", "a.scores.tif"))}
    with open_image(image) as src:
        stream.label_large_image(pred, src, paths, ["labels", "scores"], tile_size=16)
""")


def test_sigkill_then_rerun_is_byte_identical(tmp_path, ckpt):
    path = _tiff(tmp_path / "a.tif", random_image(64, 64, 3, seed=3))
    out = tmp_path / "out"
    out.mkdir()
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(ckpt), str(path), str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    chunks = stream.work_dir(out / "a.tif") / "labels" / "c"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if chunks.is_dir() and sum(1 for _ in chunks.rglob("*") if _.is_file()) >= 3:
            break
        time.sleep(0.02)
    assert child.poll() is None, child.stderr.read().decode()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    finished = sum(1 for p in chunks.rglob("*") if p.is_file() and not p.name.endswith(".partial"))
    assert 3 <= finished < 16 and not (out / "a.tif").exists()
    pred = load_predictor(ckpt, output_stride=1)
    seen = []
    with open_image(path) as src:
        stream.label_large_image(pred, src, _paths(out, "a"), ["labels", "scores"], tile_size=16,
                                 log=seen.append)
    assert f"{finished} done before" in seen[0]
    ref = _paths(tmp_path / "ref", "a")
    with open_image(path) as src:
        stream.label_large_image(pred, src, ref, ["labels", "scores"], tile_size=16)
    for kind in ("labels", "scores"):
        assert (out / ref[kind].name).read_bytes() == ref[kind].read_bytes(), kind


def test_label_pyramid_levels_palette_and_determinism(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (1300, 700), dtype=np.uint8)
    palette = [[10, 20, 30], [200, 0, 0], [0, 255, 7]]

    def read(rows, cols):
        return labels[rows][:, cols]

    for name in ("a.tif", "b.tif"):
        write_label_pyramid(tmp_path / name, read, 1300, 700, 3, palette)
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()
    assert pyramid_shapes(1300, 700) == [(1300, 700), (650, 350), (325, 175)]
    with tifffile.TiffFile(tmp_path / "a.tif") as tf:
        page = tf.pages[0]
        assert tf.is_bigtiff and page.is_tiled and (page.tilelength, page.tilewidth) == (512, 512)
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        assert np.array_equal(page.colormap[:, :3].T, np.array(palette) * 257)
        levels = tf.series[0].levels
        assert [lv.shape for lv in levels] == pyramid_shapes(1300, 700)
        for k, lv in enumerate(levels):
            assert np.array_equal(lv.asarray(), labels[::2 ** k, ::2 ** k]), k
        assert "Software" not in page.tags and "DateTime" not in page.tags


def test_overlay_of_large_image_is_downsampled(tmp_path, ckpt, monkeypatch):
    monkeypatch.setattr(stream, "OVERLAY_MAX_SIDE", 20)
    monkeypatch.setattr(stream, "_OVERLAY_BLOCK", 9)  # several blocks, not a multiple of the step
    image = random_image(50, 41, 3, seed=6)
    pred = load_predictor(ckpt, output_stride=1)
    paths = _paths(tmp_path, "a")
    with open_image(_tiff(tmp_path / "a.tif", image)) as src:
        stream.label_large_image(pred, src, paths, ["labels", "overlay"], tile_size=20)
    labels = tifffile.imread(paths["labels"])
    overlay = np.asarray(Image.open(paths["overlay"]))
    assert overlay.shape == (17, 14, 3)  # every 3rd pixel: ceil(50/3) x ceil(41/3)
    assert np.array_equal(overlay, blend_overlay(image[::3, ::3], labels[::3, ::3], pred.palette, 0.5))


def test_already_dense_network_is_refused_for_large_images(tmp_path, ckpt):
    pred = load_predictor(ckpt)
    pred.dense = None
    with open_image(_tiff(tmp_path / "a.tif", random_image(20, 20, 3))) as src, \
            pytest.raises(ValueError, match=r"a\.tif: a large image is labelled tile by tile"):
        stream.label_large_image(pred, src, _paths(tmp_path, "a"), ["labels"], tile_size=16)


def test_folder_run_routes_large_images_and_reports_a_corrupt_tile(tmp_path, ckpt):
    from fcnseg.infer import InferenceSettings, run_inference

    inp = tmp_path / "in"
    inp.mkdir()
    big = random_image(70, 60, 3, seed=7)
    tifffile.imwrite(inp / "big.tif", big, tile=(32, 32), photometric="rgb", compression="zlib")
    Image.fromarray(random_image(20, 30, 3, seed=8)).save(inp / "small.png")
    Image.fromarray(random_image(40, 45, 3, seed=9)).save(inp / "wide.png")  # large, decoded whole
    tifffile.imwrite(inp / "bad.tif", big, tile=(32, 32), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(inp / "bad.tif") as tf:
        offset, count = tf.pages[0].dataoffsets[3], tf.pages[0].databytecounts[3]  # rows 32..63, cols 32..59
    with open(inp / "bad.tif", "r+b") as f:
        f.seek(offset + 2)
        f.write(b"\xff" * (count - 4))

    def run(out, **kw):
        return run_inference(InferenceSettings(checkpoint=str(ckpt), input=str(inp), output=str(out),
                                               device="cpu", tile_size=24, progress=False, **kw),
                             log=lambda m: None)

    res = run(tmp_path / "out", large_image_pixels=1000, save_scores=True)
    rows = {r["file"]: r for r in res.rows}
    assert rows["big.tif"]["status"] == "ok" and rows["big.tif"]["output"] == "big.tif"
    assert rows["small.png"]["status"] == "ok" and (tmp_path / "out" / "small.png").exists()
    assert rows["bad.tif"]["status"] == "failed"
    assert "bad.tif: region (top, left, height, width) = (" in rows["bad.tif"]["error"]
    assert "cannot be decoded" in rows["bad.tif"]["error"]
    ref = run(tmp_path / "ref", save_scores=True)  # the same images below the threshold: PNG, in memory
    for stem in ("big", "wide"):
        want = np.asarray(Image.open(tmp_path / "ref" / f"{stem}.png"))
        assert np.array_equal(tifffile.imread(tmp_path / "out" / f"{stem}.tif"), want), stem
    np.testing.assert_allclose(tifffile.imread(tmp_path / "out" / "big.scores.tif").astype(np.float32),
                               np.load(tmp_path / "ref" / "big.scores.npy").astype(np.float32), atol=2e-3)
    assert {r["file"]: r["status"] for r in ref.rows}["bad.tif"] == "failed"  # the whole decode fails too
    again = run(tmp_path / "out", large_image_pixels=1000, save_scores=True)
    assert {r["file"]: r["status"] for r in again.rows}["big.tif"] == "skipped"


def test_folder_run_refuses_images_above_max_image_pixels(tmp_path, ckpt):
    from fcnseg.infer import InferenceSettings, run_inference

    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(random_image(40, 50, 3)).save(inp / "a.png")
    res = run_inference(InferenceSettings(checkpoint=str(ckpt), input=str(inp), output=str(tmp_path / "out"),
                                          device="cpu", progress=False, max_image_pixels=1999),
                        log=lambda m: None)
    (row,) = res.rows
    assert row["status"] == "failed"
    assert "a.png: 50x40 = 2000 pixels is above max_image_pixels=1999" in row["error"]


def test_tile_store_keeps_more_score_channels_than_label_classes(tmp_path):
    """head=all: labels from the first head's classes, scores of every head."""
    from fcnseg.infer.tiling import plan_tiles

    plan = plan_tiles(30, 20, (5, 5), 1, 16)  # 2 x 2 tiles: 16 x 16 cells, the last row 14, the last column 4
    store = stream.TileStore(tmp_path / "w", plan, 300, 7, {"k": 1}, print)
    assert store.labels.dtype == np.uint16 and store.scores.shape == (7, 30, 20)
    assert plan.tile_shape(16, 16) == (14, 4)
    labels = np.arange(56, dtype=np.uint16).reshape(14, 4)
    scores = np.ones((7, 14, 4), np.float16)
    assert not store.done(16, 16)
    store.write(16, 16, labels, scores)
    assert store.done(16, 16) and not store.done(0, 0) and not store.done(0, 16)
    assert np.array_equal(store.labels[16:, 16:], labels) and float(store.scores[6, 29, 19]) == 1.0
    assert not store.labels[:16, :].any()  # the short tile wrote only its own cells
    reopened = stream.TileStore(tmp_path / "w", plan, 300, 7, {"k": 1}, print)
    assert reopened.done(16, 16)
    assert not stream.TileStore(tmp_path / "w", plan, 300, 7, {"k": 2}, print).done(16, 16)  # other settings
