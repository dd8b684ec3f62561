"""fcnseg.infer.pipeline: reading ahead stays in order and bounded; the writer runs tasks in
order behind the caller and hands back a task's failure."""
import threading

import pytest

from fcnseg.infer.pipeline import Writer, read_ahead


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_read_ahead_keeps_order_and_holds_at_most_depth_reads(workers):
    started, lock = [], threading.Lock()

    def read(i):
        with lock:
            started.append(i)
        return i * i

    got = []
    for k, value in enumerate(read_ahead(range(20), read, workers, depth=3)):
        with lock:
            ahead = len(started) - k  # reads started but not yet consumed, this one included
        assert ahead <= 4 if workers else ahead == 1
        got.append(value)
    assert got == [i * i for i in range(20)]


def test_writer_runs_tasks_in_order_and_reraises_a_failure():
    done = []
    with Writer(depth=2) as w:
        for i in range(10):
            w.submit(lambda i=i: done.append(i))
    assert done == list(range(10))
    w = Writer(depth=2)
    w.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        w.close()
