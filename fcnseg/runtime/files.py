"""All-or-nothing writes."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

# Every output goes to a hidden temporary file in the destination folder (same file
# system, so the final rename is atomic), is flushed to disk, then renamed over the
# destination with os.replace: a killed run leaves the old file, the new file or
# nothing, never half a file. Temporaries are named ``.<name>.<pid>.fcnseg-tmp`` so a
# rerun can find and delete the ones a killed run left behind, and so nothing that
# scans a folder for images or checkpoints mistakes them for results.

TMP_SUFFIX = ".fcnseg-tmp"


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def remove_stale_temps(path: str | os.PathLike) -> int:
    """Delete temporaries of ``path`` left by killed runs; returns how many."""
    path = Path(path)
    n = 0
    if path.parent.is_dir():
        for p in path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                n += 1
    return n


def remove_stale_temps_in(folder: str | os.PathLike) -> int:
    """Delete every temporary in ``folder`` (not below it) with one directory scan, for a
    run that cleans a whole output folder before it writes there; returns how many."""
    n = 0
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for e in entries:
        if e.name.startswith(".") and e.name.endswith(TMP_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(e.path)
                n += 1
    return n


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

        with atomic_path(out / "a.png") as tmp:
            image.save(tmp, format="PNG")   # give the format: the name ends in .fcnseg-tmp
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
