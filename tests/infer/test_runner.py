"""Folder runs: formats, exact labels, palette, bad files, resume, refusals, batching."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg
from fcnseg.data.io import prepare_image, read_image
from fcnseg.infer import InferenceSettings, load_predictor, run_inference
from fcnseg.infer.paths import InputError

from helpers import BAD, GOOD, PALETTE, random_image, save, write_checkpoint


def settings(ckpt, inp, out, **kw):
    kw.setdefault("device", "cpu")
    return InferenceSettings(checkpoint=str(ckpt), input=str(inp), output=str(out), **kw)


def dense_reference(ckpt, path, stride=1):
    """Labels and scores of the whole image in one untiled pass, float64."""
    pred = load_predictor(ckpt, device="cpu", channels_last=False, dtype=torch.float64,
                          output_stride=stride)
    x = prepare_image(read_image(path), pred.in_channels, pred.mean, pred.std)
    with torch.no_grad():
        s = pred.dense(x[None].double())[0]
    return s.argmax(0).numpy(), s.numpy()


def test_folder_run_formats_labels_palette_and_failures(ckpt, image_tree, tmp_path):
    out = tmp_path / "out"
    res = run_inference(settings(ckpt, image_tree, out, tile_size=16, batch_size=3,
                                 save_overlay=True, save_scores=True), log=lambda m: None)
    status = {r["file"]: r["status"] for r in res.rows}
    assert status == {**{f: "ok" for f in GOOD}, **{f: "failed" for f in BAD}}
    assert res.failed == len(BAD)
    errors = {r["file"]: r["error"] for r in res.rows}
    assert "empty" in errors["bad/empty.jpg"] and "truncated" in errors["bad/truncated.png"]
    for f in GOOD:
        stem = os.path.splitext(f)[0]
        src = read_image(image_tree / f)
        lab = Image.open(out / f"{stem}.png")
        assert lab.mode == "P" and lab.size == (src.shape[1], src.shape[0])
        assert lab.getpalette()[:15] == [v for c in PALETTE for v in c]
        want, scores = dense_reference(ckpt, image_tree / f)
        got = np.asarray(lab)
        # float32 tiles vs a float64 whole-image pass: only exact ties could differ
        assert (got == want).mean() > 0.999, f
        sc = np.load(out / f"{stem}.scores.npy")
        assert sc.dtype == np.float16 and sc.shape == scores.shape
        np.testing.assert_allclose(sc, scores, atol=2e-2, rtol=1e-2)
        ov = Image.open(out / f"{stem}.overlay.png")
        assert ov.mode == "RGB" and ov.size == lab.size
    assert len(np.unique(np.asarray(Image.open(out / "tiles/t.png")))) > 1
    doc = json.loads((out / "summary.json").read_text())
    assert doc["counts"] == {"ok": len(GOOD), "skipped": 0, "failed": len(BAD)}
    csv = (out / "summary.csv").read_text().splitlines()
    assert csv[0] == "file,output,height,width,seconds,status,error" and len(csv) == 12
    assert not list(out.rglob("*.fcnseg-tmp"))


def test_resume_skips_and_overwrite_redoes(ckpt, image_tree, tmp_path):
    out = tmp_path / "out"
    run_inference(settings(ckpt, image_tree, out), log=lambda m: None)
    label = out / "rgb.png"
    mtime = label.stat().st_mtime_ns
    res = run_inference(settings(ckpt, image_tree, out), log=lambda m: None)
    assert {r["file"] for r in res.rows if r["status"] == "skipped"} == set(GOOD)
    assert label.stat().st_mtime_ns == mtime  # not rewritten
    # asking for one more result kind redoes only what is missing
    res = run_inference(settings(ckpt, image_tree, out, save_overlay=True), log=lambda m: None)
    assert {r["file"] for r in res.rows if r["status"] == "ok"} == set(GOOD)
    assert label.stat().st_mtime_ns == mtime and (out / "rgb.overlay.png").exists()
    res = run_inference(settings(ckpt, image_tree, out, overwrite=True), log=lambda m: None)
    assert {r["file"] for r in res.rows if r["status"] == "ok"} == set(GOOD)
    assert label.stat().st_mtime_ns != mtime


def test_gray_model_on_colour_and_tiled_equals_untiled(tmp_path):
    ck = write_checkpoint(tmp_path / "gray.pt", in_channels=1, num_classes=3, pad_mode="constant",
                          pad_value=-0.5)
    img = save(tmp_path / "in" / "big.png", random_image(70, 53, 3, seed=9))
    a = run_inference(settings(ck, img, tmp_path / "a", tile_size=12, save_scores=True),
                      log=lambda m: None)
    b = run_inference(settings(ck, img, tmp_path / "b", tile_size=0, save_scores=True),
                      log=lambda m: None)
    assert a.failed == b.failed == 0 and a.tile_size == 12
    la, lb = (np.asarray(Image.open(tmp_path / d / "big.png")) for d in "ab")
    assert np.array_equal(la, lb)
    # float32 convolutions sum in an order that depends on the input size: a float16 ulp
    # at most (the float64 test in test_tiling.py checks exactness)
    np.testing.assert_allclose(np.load(tmp_path / "a/big.scores.npy").astype(np.float32),
                               np.load(tmp_path / "b/big.scores.npy").astype(np.float32),
                               rtol=1e-3, atol=1e-3)
    want, _ = dense_reference(ck, img)
    assert (la == want).mean() > 0.999


def test_batched_small_images_equal_one_by_one(ckpt, tmp_path):
    for i in range(7):
        save(tmp_path / "in" / f"im{i}.png", random_image(18, 22, 3, seed=20 + i))
    save(tmp_path / "in" / "odd.png", random_image(25, 13, 3, seed=40))
    run_inference(settings(ckpt, tmp_path / "in", tmp_path / "b4", batch_size=4), log=lambda m: None)
    run_inference(settings(ckpt, tmp_path / "in", tmp_path / "b1", batch_size=1), log=lambda m: None)
    for i in list(range(7)) + ["odd"]:
        name = f"im{i}.png" if i != "odd" else "odd.png"
        assert np.array_equal(np.asarray(Image.open(tmp_path / "b4" / name)),
                              np.asarray(Image.open(tmp_path / "b1" / name)))


def test_output_stride_labels_at_image_size(ckpt, tmp_path):
    img = save(tmp_path / "in" / "x.png", random_image(29, 34, 3, seed=3))
    res = run_inference(settings(ckpt, img, tmp_path / "out", output_stride=2, save_scores=True),
                        log=lambda m: None)
    assert res.failed == 0
    lab = np.asarray(Image.open(tmp_path / "out" / "x.png"))
    assert lab.shape == (29, 34)
    assert np.load(tmp_path / "out" / "x.scores.npy").shape == (5, 15, 17)
    want, _ = dense_reference(ckpt, img, stride=2)  # (15, 17): pixel (2m, 2n)
    assert (lab[::2, ::2] == want).mean() > 0.999


def test_refuses_output_inside_input_and_glob_over_outputs(ckpt, image_tree, tmp_path):
    with pytest.raises(InputError, match="inside the input folder"):
        run_inference(settings(ckpt, image_tree, image_tree / "results"), log=lambda m: None)
    with pytest.raises(InputError, match="inside the input folder"):
        run_inference(settings(ckpt, image_tree, image_tree), log=lambda m: None)
    out = tmp_path / "out"
    run_inference(settings(ckpt, image_tree / "rgb.png", out), log=lambda m: None)
    with pytest.raises(InputError, match="inside the output folder"):
        run_inference(settings(ckpt, f"{tmp_path}/**/*.png", out), log=lambda m: None)
    # a glob that reads only the input tree is fine
    res = run_inference(settings(ckpt, f"{image_tree}/a/**/*.png", out), log=lambda m: None)
    assert sorted(r["file"] for r in res.rows) == ["gray16.png", "rgba.png"]


def test_name_collision_and_escaping_symlink_fail_cleanly(ckpt, tmp_path):
    inp = tmp_path / "in"
    save(inp / "x.png", random_image(16, 16, seed=1))
    save(inp / "x.jpg", random_image(16, 16, seed=2))
    save(inp / "sub" / "y.png", random_image(16, 16, seed=3))
    out = tmp_path / "out"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    out.mkdir()
    os.symlink(outside, out / "sub")  # writing out/sub/y.png would land in elsewhere/
    res = run_inference(settings(ckpt, inp, out), log=lambda m: None)
    st = {r["file"]: (r["status"], r["error"]) for r in res.rows}
    assert st["x.jpg"][0] == "ok" and st["x.png"][0] == "failed" and "x.jpg" in st["x.png"][1]
    assert st["sub/y.png"][0] == "failed" and "outside the output folder" in st["sub/y.png"][1]
    assert not list(outside.iterdir())


def test_check_matches_dense(ckpt, tmp_path):
    img = save(tmp_path / "in" / "p.png", random_image(40, 36, 3, seed=11))
    lines = []
    res = run_inference(settings(ckpt, img, tmp_path / "out", check=True, region=[0, 30, 6, 6],
                                 tile_size=8), log=lines.append)
    (r,) = res.rows
    assert r["status"] == "ok" and r["pixels"] == 36
    assert r["max_abs_diff"] < 1e-4 and r["label_mismatches"] == 0
    assert any("max |dense - patch|" in m for m in lines)
    assert not (tmp_path / "out" / "p.png").exists()  # a check, not a labelling run


def test_patch_checker_sees_a_wrong_dense_net(ckpt, tmp_path):
    """The check can fail: a dense net with the wrong padding rule disagrees at the border."""
    img = save(tmp_path / "in" / "p.png", random_image(30, 30, 3, seed=12))
    pred = load_predictor(ckpt, device="cpu")
    pred.dense = fcnseg.densify(pred.model, pred.patch_size, pad_mode="constant").eval()
    res = run_inference(settings(ckpt, img, tmp_path / "out", check=True, region=[0, 0, 4, 4]),
                        predictor=pred, log=lambda m: None)
    assert res.rows[0]["max_abs_diff"] > 1e-3


def test_stale_temporaries_are_cleaned_with_one_scan_per_output_folder(ckpt, tmp_path, monkeypatch):
    """O(N) bookkeeping: 12 images in 2 folders -> 2 scans, whatever the number of images."""
    import fcnseg.infer.runner as runner
    from fcnseg import runtime
    for i in range(12):
        save(tmp_path / "in" / ("a" if i % 2 else "b") / f"im{i}.png", random_image(12, 14, 3, seed=i))
    out = tmp_path / "out"
    stale = [out / "a" / ".im1.png.999.fcnseg-tmp", out / "b" / ".im0.scores.npy.12.fcnseg-tmp"]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half a file")
    scanned = []
    real = runner.remove_stale_temps_in
    monkeypatch.setattr(runner, "remove_stale_temps_in", lambda d: scanned.append(d) or real(d))
    monkeypatch.setattr(runtime, "remove_stale_temps", lambda p: pytest.fail("one glob per image"))
    res = run_inference(settings(ckpt, tmp_path / "in", out), log=lambda m: None)
    assert res.failed == 0 and len(res.rows) == 12
    assert sorted(scanned) == [out / "a", out / "b"]
    assert not any(p.exists() for p in stale) and len(list(out.rglob("im*.png"))) == 12


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_file_is_reported_and_the_folder_goes_on(ckpt, tmp_path, workers):
    for i in range(6):
        save(tmp_path / "in" / f"im{i}.png", random_image(16, 16, 3, seed=i))
    good = (tmp_path / "in" / "im0.png").read_bytes()
    (tmp_path / "in" / "im2.png").write_bytes(good[: len(good) // 2])  # truncated, mid-folder
    lines = []
    res = run_inference(settings(ckpt, tmp_path / "in", tmp_path / "out", read_workers=workers,
                                 read_ahead=2, batch_size=2), log=lines.append)
    st = {r["file"]: r for r in res.rows}
    assert st["im2.png"]["status"] == "failed" and "im2.png" in st["im2.png"]["file"]
    assert "truncated" in st["im2.png"]["error"]
    assert [f for f, r in sorted(st.items()) if r["status"] == "ok"] == [f"im{i}.png" for i in (0, 1, 3, 4, 5)]
    assert any("im2.png: failed" in m and "truncated" in m for m in lines)
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert doc["counts"] == {"ok": 5, "skipped": 0, "failed": 1}
    assert not list((tmp_path / "out").glob(".summary.rank*"))  # journal merged and removed


def test_small_images_are_stacked_and_large_ones_run_alone(ckpt, tmp_path, monkeypatch):
    """batch_size stacks only images whose windows together hold at most one tile's pixels;
    an image that needs tiles runs alone, one tile per pass."""
    from fcnseg.infer import model as model_mod
    for i in range(4):
        save(tmp_path / "in" / f"s{i}.png", random_image(10, 10, 3, seed=i))
    save(tmp_path / "in" / "large.png", random_image(60, 50, 3, seed=7))
    stacks, tiled = [], []
    start, whole_tiles = model_mod.Predictor.start_batch, model_mod.predict_tiled
    monkeypatch.setattr(model_mod.Predictor, "start_batch",
                        lambda self, raws, **kw: stacks.append(len(raws)) or start(self, raws, **kw))
    monkeypatch.setattr(model_mod, "predict_tiled",
                        lambda *a, **kw: tiled.append(kw["batch_size"]) or whole_tiles(*a, **kw))
    res = run_inference(settings(ckpt, tmp_path / "in", tmp_path / "out", tile_size=24, batch_size=8),
                        log=lambda m: None)
    assert res.failed == 0
    limit = load_predictor(ckpt, device="cpu", tile_size=24).batch_limit(10, 10)
    assert 1 < limit < 4  # a 10x10 window (halo included) holds under half a 24x24 tile's pixels
    assert tiled == [1] and sorted(stacks) == sorted([limit, 4 - limit])


def test_finished_images_weigh_nothing_when_ranks_are_balanced(ckpt, tmp_path):
    """Rank 0 balances a resumed run on what is left: an image whose results exist (under
    the ordinary or the large-image names) counts as finished."""
    from pathlib import PurePosixPath

    from fcnseg.infer.paths import InputFile
    from fcnseg.infer.runner import _is_done
    from fcnseg.infer.stream import large_output_path
    out = tmp_path / "out"
    cfg = settings(ckpt, tmp_path, out, save_scores=True)
    a, b = (InputFile(tmp_path / n, PurePosixPath(n)) for n in ("a.png", "sub/b.tif"))
    assert not _is_done(cfg, a, out)
    for kind in ("labels", "scores"):
        a.output(out, kind).parent.mkdir(parents=True, exist_ok=True)
        a.output(out, kind).write_bytes(b"x")
        p = large_output_path(b.output(out, kind), kind)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert _is_done(cfg, a, out) and _is_done(cfg, b, out)
    assert not _is_done(settings(ckpt, tmp_path, out, save_scores=True, overwrite=True), a, out)
    assert not _is_done(settings(ckpt, tmp_path, out, save_overlay=True), a, out)
