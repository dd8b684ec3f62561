"""The command line: exit codes, a run killed mid-way, torchrun with two processes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import random_image, save

ROOT = Path(__file__).resolve().parents[2]
INFER = str(ROOT / "tools" / "infer.py")


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return e


def infer(*args, **kw):
    return subprocess.run([sys.executable, INFER, *args], capture_output=True, text=True,
                          env=env(), timeout=120, **kw)


def test_cli_exit_codes(ckpt, image_tree, tmp_path):
    r = infer(f"checkpoint={ckpt}", f"input={image_tree}", f"output={tmp_path / 'out'}",
              "tile_size=24", "batch_size=2")
    assert r.returncode == 1, r.stderr  # the four bad files
    assert "4 image(s) failed" in r.stderr
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert doc["counts"] == {"ok": 7, "skipped": 0, "failed": 4}
    assert not list(Path.cwd().glob("infer.log"))  # hydra writes no log file


def test_cli_refusal_exit_code_2(ckpt, image_tree):
    import importlib.util

    from hydra import compose, initialize_config_dir
    spec = importlib.util.spec_from_file_location("fcnseg_tools_infer", INFER)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("infer", overrides=[f"checkpoint={ckpt}", f"input={image_tree}",
                                          f"output={image_tree / 'o'}", "device=cpu"])
    with pytest.raises(SystemExit) as e:
        tool.main.__wrapped__(cfg)
    assert e.value.code == 2 and not (image_tree / "o").exists()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("infer", overrides=[f"checkpoint={ckpt}", f"input={image_tree}",
                                          "output=x", "+tile_sise=3"])  # a typo
    with pytest.raises(ValueError, match="tile_sise: unknown setting"):
        tool.settings_from(cfg)


def _check_outputs_complete(out: Path, shape) -> int:
    """Every visible result decodes fully; a label map implies its other results. Returns
    the number of finished images."""
    labels = [p for p in out.glob("*.png") if not p.name.endswith(".overlay.png")]
    for p in out.glob("*.png"):
        with Image.open(p) as im:
            im.load()
            assert im.size == shape[::-1], p
    for p in out.glob("*.npy"):
        assert np.load(p).shape == (5,) + shape, p
    for p in labels:
        stem = p.name[:-4]
        assert (out / f"{stem}.overlay.png").exists() and (out / f"{stem}.scores.npy").exists()
    return len(labels)


def test_killed_run_leaves_no_partial_output_and_resumes(ckpt, tmp_path):
    n, shape = 30, (90, 70)
    for i in range(n):
        save(tmp_path / "in" / f"img{i:02d}.png", random_image(*shape, seed=i))
    out = tmp_path / "out"
    args = [sys.executable, INFER, f"checkpoint={ckpt}", f"input={tmp_path / 'in'}",
            f"output={out}", "tile_size=20", "batch_size=1", "save_scores=true", "save_overlay=true"]
    proc = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    try:
        while time.time() < deadline and proc.poll() is None:
            if len([p for p in out.glob("img*.png")]) >= 6:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done = _check_outputs_complete(out, shape)
    assert 0 < done < n
    r = infer(*args[2:])
    assert r.returncode == 0, r.stderr
    counts = json.loads((out / "summary.json").read_text())["counts"]
    assert counts == {"ok": n - done, "skipped": done, "failed": 0}
    assert _check_outputs_complete(out, shape) == n
    assert not list(out.glob(".*"))  # no temporaries left


def _torchrun_available():
    return shutil.which("torchrun") or (Path(sys.executable).parent / "torchrun").exists()


@pytest.mark.slow  # about 20 s on 2 busy cores: two processes import torch
@pytest.mark.skipif(not _torchrun_available(), reason="torchrun not installed")
def test_torchrun_two_ranks_share_the_files(ckpt, image_tree, tmp_path):
    out = tmp_path / "out"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", INFER,
                        f"checkpoint={ckpt}", f"input={image_tree}", f"output={out}", "device=cpu"],
                       capture_output=True, text=True, env=env(), timeout=180)
    assert r.returncode != 0  # the bad files: ranks exit 1
    log = r.stdout + r.stderr
    assert "rank 0/2:" in log and "rank 1/2:" in log
    doc = json.loads((out / "summary.json").read_text())
    assert doc["counts"] == {"ok": 7, "skipped": 0, "failed": 4}
    assert len(doc["files"]) == 11 and len({f["file"] for f in doc["files"]}) == 11
    assert not list(out.glob(".summary.rank*"))
    # each rank labelled its own share: every image once
    assert len([p for p in out.rglob("*.png")]) == 7
