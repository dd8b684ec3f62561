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
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


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
    log = (sweep / "0_patchnet" / "train.log").read_text()  # the run directory keeps the story
    assert "step cost (" in log and "mean IoU" in log and "[fcnseg.train.segmentation]" in log


@pytest.mark.slow  # kills a real run, resumes it, compares with an uninterrupted run
def test_sigterm_then_resume_equals_uninterrupted(tmp_path):
    root = make_scenes(tmp_path / "s", n_train=8, n_val=2)
    args = ["data=folder", f"data.root={root}", "trainer.device=cpu", "trainer.epochs=12",
            "trainer.batch_size=2", "trainer.deterministic=true", "trainer.grid_images=0",
            "trainer.eval_every=4", "model.kwargs.width_mult=0.25"]
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
    assert p.returncode == 128 + signal.SIGTERM, out[-2000:]
    assert "stopped by signal" in out or "abandoned the step" in out, out[-2000:]
    subprocess.run(TOOL + args + [f"hydra.run.dir={cut}", "resume=true"], check=True,
                   env=ENV, capture_output=True, timeout=600)
    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(cut / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 48
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


@pytest.mark.slow  # a real run with seconds-long steps, killed in the middle of one
def test_sigterm_during_a_long_step_exits_within_seconds_and_resumes(tmp_path):
    # full-width patchnet at output stride 1 on 8 images of 160x160: a step of several
    # seconds on a CPU (much longer than the 2 s grace of the stop path)
    root = make_scenes(tmp_path / "s", n_train=8, n_val=1, size=160)
    run = tmp_path / "run"
    args = ["data=folder", f"data.root={root}", "trainer.device=cpu", "trainer.output_stride=1",
            "trainer.max_steps=3", "trainer.grid_images=0", f"hydra.run.dir={run}"]
    p = subprocess.Popen(TOOL + args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, bufsize=1)
    lines = []
    for line in p.stdout:  # the first step has ended: the second is in progress
        lines.append(line)
        if line.startswith("first step:"):
            break
    else:
        raise AssertionError("no step was reported:\n" + "".join(lines[-30:]))
    took = float(line.split()[2])
    time.sleep(min(1.0, took / 4))
    sent = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    exit_s = time.monotonic() - sent
    print(f"step {took:.1f} s; SIGTERM to exit {exit_s:.2f} s")
    assert p.returncode == 128 + signal.SIGTERM, out[-2000:]
    assert exit_s < min(8.0, took), out[-2000:]  # did not wait for the step to end
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["step"] == 1  # the abandoned step left no trace
    r = subprocess.run(TOOL + args + ["resume=true"], env=ENV, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 3


def test_the_data_kind_picks_the_task_from_the_registry():
    from fcnseg.settings import SettingsError
    from fcnseg.train import TASKS
    from fcnseg.train.trainer import task_for
    assert task_for("folder") is task_for("voc") is TASKS["segmentation"]
    assert task_for("patches") is TASKS["patches"]
    with pytest.raises(ValueError, match="unknown dataset kind 'nope'"):
        task_for("nope")

    class Odd:
        task = "depth"
    import fcnseg.data.datasets as datasets
    datasets.DATASETS["odd"] = Odd
    try:
        with pytest.raises(SettingsError, match="data.kind: dataset kind 'odd' trains 'depth'"):
            task_for("odd")
    finally:
        del datasets.DATASETS["odd"]
