"""The stages around the device in a folder run: reading ahead and writing behind.

Decoding (Pillow and tifffile release the GIL while they decode) runs in worker threads a
bounded number of images ahead of the device, and result files (PNG encoding, fsync,
rename) are written by one writer thread behind it, so the main thread only builds
windows and runs the network. Both queues are bounded: memory holds at most the images in
flight, never the folder.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def read_ahead(items: Iterable[T], read: Callable[[T], R], workers: int, depth: int) -> Iterator[R]:
    """read(item) for every item, in order, with up to ``depth`` reads running or done ahead
    of the consumer on ``workers`` threads (0: read on the calling thread). ``read`` must
    not raise: it returns what the consumer should see for a file that cannot be read."""
    if workers <= 0:
        yield from map(read, items)
        return
    depth = max(1, int(depth))
    with ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="fcnseg-read") as pool:
        pending = []
        it = iter(items)
        try:
            for item in it:
                pending.append(pool.submit(read, item))
                if len(pending) > depth:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
        finally:
            for f in pending:  # the consumer stopped early: drop what was read ahead
                f.cancel()


class Writer:
    """One thread running submitted tasks in order; submit() blocks while ``depth`` tasks
    wait (back-pressure bounds the results held in memory). A task handles its own errors;
    one that raises anyway stops the writer, and close() re-raises it.

        with Writer(depth=8) as writer:
            writer.submit(lambda: save_labels(path, labels, palette))
    """

    _STOP = object()

    def __init__(self, depth: int = 8):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="fcnseg-write", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            task = self._queue.get()
            if task is self._STOP:
                return
            if self._error is None:
                try:
                    task()
                except BaseException as e:  # noqa: BLE001  handed to the main thread in close()
                    self._error = e

    def submit(self, task: Callable[[], None]) -> None:
        if self._error is not None:
            raise RuntimeError("the writer thread stopped") from self._error
        self._queue.put(task)

    def close(self) -> None:
        self._queue.put(self._STOP)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # already failing: stop the thread, keep the first error
            self._queue.put(self._STOP)
            self._thread.join()
