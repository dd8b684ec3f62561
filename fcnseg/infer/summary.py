"""The run summary: one row per input file, as CSV and/or JSON, merged across ranks."""
from __future__ import annotations

import csv
import io
import json
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


def partial_path(out_dir: Path, rank: int) -> Path:
    return out_dir / f".summary.rank{rank}.json"


def write_partial(out_dir: Path, rank: int, rows: list[dict]) -> None:
    write_text_atomic(partial_path(out_dir, rank), json.dumps(rows))


def merge_partials(out_dir: Path, world_size: int) -> list[dict]:
    """Rows of ranks 0..world_size-1 (all must have written theirs); the partials are removed."""
    rows = []
    for r in range(world_size):
        p = partial_path(out_dir, r)
        if not p.exists():
            raise RuntimeError(f"rank {r} wrote no partial summary {p}; it probably crashed, "
                               f"see its log. Its finished images are on disk: rerun to resume")
        rows += json.loads(p.read_text(encoding="utf-8"))
    for r in range(world_size):
        partial_path(out_dir, r).unlink()
    return rows
