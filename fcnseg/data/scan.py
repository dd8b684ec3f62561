"""The dataset scan before training, and the cache that makes it a one-time cost.

Checking a dataset decodes every file (fcnseg.data.validate_dataset). What each file
gave (its size and the pixels per class of its mask) is kept in a small JSON file,
``<data root>/.fcnseg-scan.json``, so that a resumed run, the other ranks of a torchrun
job and the next run on the same data decode only what changed. An entry is keyed by
the paths of its files (relative to the root), their sizes and modification times, and
the dataset settings that change the result (class count, channels, ignore label, label
mapping): a changed, added or removed file invalidates its own entry and no other. Only
successful results are kept; a bad file is decoded again, so its error is always current.

When the root is not writable (a shared read-only dataset) the cache goes to the user's
cache directory instead, ``$XDG_CACHE_HOME/fcnseg/scan/<hash of the root's path>.json``
(``~/.cache/...`` without the variable); a cache that cannot be read is ignored and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from fcnseg.runtime.files import write_text_atomic

from .errors import DatasetError

logger = logging.getLogger(__name__)

CACHE_NAME = ".fcnseg-scan.json"
FORMAT = 1  # bump when what an entry holds changes; older files are then ignored
MAX_THREADS = 8  # decoding threads (PIL and OpenCV release the GIL while they decode)


def _stat(path: Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def user_cache_file(root: Path) -> Path:
    """The cache of a read-only root: one file per root in the user's cache directory."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return base / "fcnseg" / "scan" / f"{digest}.json"


class ScanCache:
    """Per-file results of a dataset scan, read from and saved to ``<root>/.fcnseg-scan.json``
    (or the file ``fallback`` when the root is read-only; default: one per root in the
    user's cache directory)."""

    def __init__(self, root: str | os.PathLike, fallback: str | os.PathLike | None = None, *,
                 progress: bool = False, save: bool = True):
        self.progress = progress  # scans with this cache show a progress bar (stderr)
        self.save_on_exit = save  # ``with ScanCache(...)`` saves at the end (also after an error)
        self.root = Path(root).expanduser()
        self.fallback = Path(fallback) if fallback is not None else user_cache_file(self.root)
        self.entries: dict[str, dict[str, Any]] = {}
        for path in reversed(self.candidates()):  # the root's file wins over the fallback's
            self.entries.update(self._read(path))
        self.changed = False

    def __enter__(self) -> "ScanCache":
        return self

    def __exit__(self, *exc) -> None:
        if self.save_on_exit:
            self.save()  # what decoded well is kept even when another file was bad

    def candidates(self) -> list[Path]:
        """Where the cache may live, in order of preference."""
        return [self.root / CACHE_NAME, self.fallback]

    @staticmethod
    def _read(path: Path) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
            return {}
        return data["entries"]

    def key(self, files: Sequence[Path]) -> str:
        """The entry name of a sample: its files, relative to the root where they are below it."""
        names = []
        for f in files:
            try:
                names.append(Path(f).relative_to(self.root).as_posix())
            except ValueError:
                names.append(str(Path(f).resolve()))
        return "|".join(names)

    def get(self, files: Sequence[Path], settings: str) -> Any:
        """The stored result for these files and settings, or None when any file changed."""
        entry = self.entries.get(self.key(files))
        if not isinstance(entry, dict) or entry.get("settings") != settings:
            return None
        if entry.get("stat") != [_stat(Path(f)) for f in files]:
            return None
        return entry.get("value")

    def put(self, files: Sequence[Path], settings: str, value: Any) -> None:
        stats = [_stat(Path(f)) for f in files]
        if None in stats:
            return
        self.entries[self.key(files)] = {"stat": stats, "settings": settings, "value": value}
        self.changed = True

    def forget_missing(self) -> None:
        """Drop the entries whose files no longer exist (a removed file takes its entry along)."""
        gone = [k for k in self.entries
                if any(_stat(Path(n) if os.path.isabs(n) else self.root / n) is None for n in k.split("|"))]
        for k in gone:
            del self.entries[k]
        self.changed = self.changed or bool(gone)

    def save(self) -> Path | None:
        """Write the cache atomically where it may live; returns the file written, None when
        nothing changed or no place was writable (the scan then just is not cached)."""
        if not self.changed:
            return None
        self.forget_missing()
        text = json.dumps({"format": FORMAT, "entries": self.entries}, separators=(",", ":"))
        for path in self.candidates():
            try:
                write_text_atomic(path, text)
            except OSError:
                continue
            self.changed = False
            return path
        logger.warning(f"dataset scan: could not write {self.root / CACHE_NAME} nor {self.fallback}; "
                       f"the next run will decode every file again")
        return None


def scan(files: Sequence[Sequence[Path]], decode: Callable[[int], Any], *, settings: str = "",
         cache: ScanCache | None = None, desc: str = "scan", progress: bool | None = None,
         threads: int | None = None) -> tuple[list[Any], list[str]]:
    """``decode(i)`` for every item i whose ``files[i]`` have no valid cache entry, in a
    thread pool, with a progress bar (stderr, ETA) when ``progress`` (None: the cache's
    setting). Returns (results in item order, None for an item that failed; the messages of
    the DatasetErrors raised)."""
    if progress is None:
        progress = cache is not None and cache.progress
    results: list[Any] = [None] * len(files)
    todo = []
    for i, fs in enumerate(files):
        hit = cache.get(fs, settings) if cache is not None else None
        if hit is None:
            todo.append(i)
        else:
            results[i] = hit
    if cache is not None and len(todo) < len(files):  # told where the bar would show (rank 0)
        logger.log(logging.INFO if progress else logging.DEBUG,
                   f"{desc}: {len(files) - len(todo)} of {len(files)} samples known from the scan cache")
    problems: list[str] = []

    def run(i):
        try:
            return i, decode(i), None
        except DatasetError as e:
            return i, None, str(e)

    from fcnseg.extras import require
    tqdm = require("tqdm", "the dataset scan's progress bar").tqdm
    n_threads = max(1, min(threads or min(MAX_THREADS, os.cpu_count() or 1), len(todo)))
    with tqdm(total=len(todo), desc=desc, unit="file", disable=not progress or not todo,
              dynamic_ncols=True, leave=False) as bar, ThreadPoolExecutor(n_threads) as pool:
        for i, value, problem in pool.map(run, todo):
            if problem is not None:
                problems.append(problem)
            else:
                results[i] = value
                if cache is not None:
                    cache.put(files[i], settings, value)
            bar.update(1)
    return results, problems
