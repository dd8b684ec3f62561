"""tools/train.py as a user runs it: overrides as written in the docs, sweeps, SIGTERM."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import ROOT, make_scenes

TOOL = [sys.executable, str(ROOT / "tools" / "train.py")]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.mark.slow  # two training subprocesses (interpreter + imports each)
def test_overrides_as_documented_and_multirun(tmp_path):
    root = make_scenes(tmp_path / "s", n_train=3, n_val=2)
    sweep = tmp_path / "sweep"
    r = subprocess.run(TOOL + ["-m", "data=folder", f"data.root={root}", "data.num_classes=3",
                               "trainer.epochs=1", "trainer.device=cpu", "model=patchnet",
                               "model.kwargs.width_mult=0.25", "trainer.seed=0,1",
                               f"hydra.sweep.dir={sweep}"],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for job in ("0_patchnet", "1_patchnet"):
        m = json.loads((sweep / job / "metrics.json").read_text())
        assert len(m["per_class_iou"]) == 3
    assert "mean IoU" in r.stdout


@pytest.mark.slow  # kills a real run, resumes it, compares with an uninterrupted run
def test_sigterm_then_resume_equals_uninterrupted(tmp_path):
    root = make_scenes(tmp_path / "s", n_train=8, n_val=2)
    args = ["data=folder", f"data.root={root}", "trainer.device=cpu", "trainer.epochs=12",
            "trainer.batch_size=2", "trainer.deterministic=true", "trainer.grid_images=0",
            "model.kwargs.width_mult=0.25"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run(TOOL + args + [f"hydra.run.dir={whole}"], check=True, env=ENV,
                   capture_output=True, timeout=600)
    p = subprocess.Popen(TOOL + args + [f"hydra.run.dir={cut}"], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not (cut / "last.pt").exists():  # interrupt once a checkpoint exists
        assert p.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130 and "stopped by signal" in out, out[-2000:]
    subprocess.run(TOOL + args + [f"hydra.run.dir={cut}", "resume=true"], check=True,
                   env=ENV, capture_output=True, timeout=600)
    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(cut / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 12
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
