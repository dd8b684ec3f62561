"""Stopping a run on SIGTERM/SIGINT within seconds, without losing what it learnt.

Schedulers (SLURM, Kubernetes) send SIGTERM and follow with SIGKILL after a grace period
of seconds to a minute, while one step of a big network on a CPU can take minutes, and
one convolution inside it tens of seconds: Python runs a signal handler only between
two operations, so waiting for the step to end can outlast the grace period.

So the training loop runs in a worker thread (PyTorch releases the GIL inside its
kernels) and the main thread only waits for signals:
- first signal: the worker is asked to stop at its next step boundary, where it writes
  last.pt and returns normally. If it has not stopped after `grace_s` (a long step), the
  main thread abandons the step in progress: it takes the run's update lock (so no
  optimiser update or checkpoint write is half done), writes the checkpoint of the last
  completed step (the weights are untouched until the optimiser's update, which the
  lock holds back) and exits the process with status 128 + signal.
- a second signal exits at once (checkpoints are written atomically, so none is ever
  truncated).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """The run's stop flag and the lock that makes 'abandon the step' safe."""

    def __init__(self, hard_exit=True):
        self.hard_exit = hard_exit     # second signal: exit the process | raise KeyboardInterrupt
        self.signum = None
        self.received_at = None
        self.lock = threading.RLock()   # held by the worker around updates and writes
        self._old = {}

    @property
    def requested(self):
        return self.signum is not None

    def _handler(self, signum, frame):
        if self.signum is not None:
            if not self.hard_exit:
                raise KeyboardInterrupt
            os.write(2, f"\nsecond signal {signum}: exiting now\n".encode())
            os._exit(128 + signum)
        self.signum, self.received_at = signum, time.monotonic()
        os.write(2, f"\nsignal {signum}: stopping at the next safe point (a second signal "
                    f"exits at once)\n".encode())

    def install(self):
        """Handlers for SIGINT/SIGTERM; False where signals cannot be handled (not the
        main thread), in which case the run simply never sees a stop request."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for s in STOP_SIGNALS:
            self._old[s] = signal.signal(s, self._handler)
        return True

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


def run_stoppable(work, stop: StopRequest, on_abandon, grace_s=2.0, poll_s=0.05):
    """work() in a worker thread, this thread watching `stop`. Returns work's result or
    re-raises its exception. When a stop was requested and the worker is still busy
    `grace_s` later, on_abandon() runs under the stop lock and the process exits with
    128 + the signal number."""
    result = {}

    def target():
        try:
            result["value"] = work()
        except BaseException as e:  # noqa: BLE001  re-raised in the caller's thread
            result["error"] = e
    worker = threading.Thread(target=target, name="fcnseg-train", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(poll_s)
        if stop.requested and worker.is_alive() and \
                time.monotonic() - stop.received_at > grace_s:
            with stop.lock:
                if not worker.is_alive():  # it reached the boundary while we waited
                    break
                on_abandon()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + stop.signum)
    worker.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
