"""The stop path of a training run (fcnseg.train.signals) in a small subprocess: a first
SIGTERM during a long uninterruptible call abandons it within the grace period after
writing the checkpoint under the lock; a step boundary reached in time stops normally; a
second signal exits at once."""
import signal
import subprocess
import sys
import textwrap
import time

from helpers import ROOT

SCRIPT = textwrap.dedent("""
    import importlib.util, sys, time
    # the module alone (standard library only): no torch import, a subprocess in a second
    spec = importlib.util.spec_from_file_location("signals", {path!r})
    signals = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(signals)
    StopRequest, run_stoppable = signals.StopRequest, signals.run_stoppable
    mode, out = sys.argv[1], sys.argv[2]
    stop = StopRequest()
    stop.install()
    def work():
        print("working", flush=True)
        if mode == "long":
            time.sleep(60)  # stands for a convolution that runs for a minute (GIL released)
        else:
            while not stop.requested:  # step boundaries every 10 ms
                time.sleep(0.01)
            return "stopped at a boundary"
    def abandon():
        open(out, "w").write("checkpoint of the last completed step")
    print(run_stoppable(work, stop, abandon, grace_s=1.0), flush=True)
""")


def _start(tmp_path, mode):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(path=str(ROOT / "fcnseg" / "train" / "signals.py")))
    p = subprocess.Popen([sys.executable, str(script), mode, str(tmp_path / "ck")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.stdout.readline().strip() == "working"
    return p


def test_a_long_call_is_abandoned_after_the_grace_period(tmp_path):
    p = _start(tmp_path, "long")
    sent = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    took = time.monotonic() - sent
    assert p.returncode == 128 + signal.SIGTERM, out
    assert 1.0 <= took < 10, took  # waited for the grace period, not for the 60 s call
    assert (tmp_path / "ck").read_text() == "checkpoint of the last completed step"


def test_a_step_boundary_in_time_stops_normally(tmp_path):
    p = _start(tmp_path, "boundary")
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0 and "stopped at a boundary" in out, out
    assert not (tmp_path / "ck").exists()


def test_a_second_signal_exits_at_once(tmp_path):
    p = _start(tmp_path, "long")
    p.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    sent = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGTERM and "second signal" in out, out
    assert time.monotonic() - sent < 0.8  # before the 1 s grace period would have ended
    assert not (tmp_path / "ck").exists()
