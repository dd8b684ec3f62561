"""tools/gpu_check.py in its CPU form: every step runs and the summary says what it found."""
import json
import subprocess
import sys

import pytest

from helpers import ROOT


@pytest.mark.slow
def test_gpu_check_quick_on_cpu_writes_a_complete_summary(tmp_path):
    p = subprocess.run([sys.executable, "tools/gpu_check.py", "--device", "cpu", "--quick", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=1500)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert p.returncode == 0 and summary["ok"], p.stdout[-3000:] + p.stderr[-3000:]
    steps = summary["steps"]
    assert set(steps) == {"tests", "equivalence", "bench", "train", "infer"}
    assert all(s["status"] == "ok" for s in steps.values())
    rows = steps["equivalence"]["rows"]
    assert {r["mode"] for r in rows} == {"fp64", "fp32", "bf16"}             # tf32 is CUDA only
    assert all(r["max_rel"] <= 1e-9 for r in rows if r["mode"] == "fp64")   # exact
    assert all(r["exact"] is False and r["label_agreement"] > 0.9 for r in rows if r["mode"] == "bf16")
    assert any("ceil-mode" in r["net"] for r in rows) and any("squeeze-excitation" in r["net"] for r in rows)
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["precision"]["float32_math"]["tf32"] is False and bench["precision"]["reduced"] == ["bf16"]
    assert (tmp_path / "benchmarks.md").exists() and steps["bench"]["rows"][0]["bf16_labels"] > 0.9
    assert steps["train"]["steps"] == 4 and (tmp_path / "train" / "best.pt").exists()
    assert steps["infer"]["counts"]["failed"] == 0 and steps["infer"]["check"]["status"] == "ok"
