"""The run summary: one row per input file, as CSV and/or JSON, merged across ranks."""
from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path

from fcnseg.runtime import write_text_atomic

COLUMNS = ["file", "output", "height", "width", "seconds", "status", "error"]
STATUSES = ("ok", "skipped", "failed")
FORMATS = ("csv", "json")


def row(file: str, status: str, *, output: str = "", height=None, width=None,
        seconds: float = 0.0, error: str = "", **extra) -> dict:
    assert status in STATUSES, status
    return {"file": file, "output": output, "height": height, "width": width,
            "seconds": round(float(seconds), 4), "status": status, "error": error, **extra}


def counts(rows: list[dict]) -> dict[str, int]:
    return {s: sum(r["status"] == s for r in rows) for s in STATUSES}


def _csv_text(rows: list[dict]) -> str:
    cols = COLUMNS + sorted({k for r in rows for k in r} - set(COLUMNS))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    return buf.getvalue()


def write_summary(out_dir: Path, rows: list[dict], formats=FORMATS) -> list[Path]:
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"summary formats must be a non-empty subset of {FORMATS}, got {list(formats)}")
    rows = sorted(rows, key=lambda r: r["file"])
    written = []
    if "csv" in formats:
        written.append(out_dir / "summary.csv")
        write_text_atomic(written[-1], _csv_text(rows))
    if "json" in formats:
        written.append(out_dir / "summary.json")
        doc = {"counts": counts(rows), "files": rows}
        write_text_atomic(written[-1], json.dumps(doc, indent=1))
    return written


# -- journals: each rank appends a JSON line per finished file, so a crash loses no bookkeeping

JOURNAL_GLOB = ".summary.rank*.jsonl"


def journal_path(out_dir: Path, rank: int) -> Path:
    return out_dir / f".summary.rank{rank}.jsonl"


class Journal:
    """This rank's rows as JSON lines, appended and flushed one by one (from any thread):
    a process killed at any point leaves every finished row on disk, at worst followed by
    half a line that read_journal skips. Each run starts its journal afresh."""

    def __init__(self, out_dir: Path, rank: int):
        self.path = journal_path(out_dir, rank)
        self._file = open(self.path, "w", encoding="utf-8")
        self._lock = threading.Lock()

    def append(self, row: dict) -> None:
        line = json.dumps(row) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_journal(path: Path) -> list[dict]:
    """The complete rows of a journal; a last line cut short by a kill is left out."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if line.endswith("\n"):
                    raise ValueError(f"{path}: line {len(rows) + 1} is not a summary row; delete "
                                     f"the file and rerun (finished images are skipped)") from None
    return rows


def merge_journals(out_dir: Path, world_size: int) -> list[dict]:
    """Rows of ranks 0..world_size-1 (each must have started its journal); then every
    journal in out_dir is removed, those of an earlier run with more ranks included."""
    rows = []
    for r in range(world_size):
        p = journal_path(out_dir, r)
        if not p.exists():
            raise RuntimeError(f"rank {r} wrote no summary journal {p}; it probably crashed, "
                               f"see its log. Its finished images are on disk: rerun to resume")
        rows += read_journal(p)
    for p in out_dir.glob(JOURNAL_GLOB):
        p.unlink(missing_ok=True)
    return rows
