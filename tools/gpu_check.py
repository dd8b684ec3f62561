"""One command that proves the GPU path: tests, equivalence in every precision, benchmark
tables, a short training run and a folder inference, all on one device.

    python tools/gpu_check.py                          # CUDA: at most about 9 minutes on one GPU
    python tools/gpu_check.py --device cpu --quick     # the same checks on the CPU, shrunk (minutes)

Steps (each recorded in <out>/summary.json with its status, seconds and numbers):

1. tests: the gpu-marked tests (`pytest -m gpu`; on a CPU they skip, which is recorded);
2. equivalence: small nets covering every converter feature (ceil-mode partial windows, several
   heads, a squeeze-excitation tail, residual/concat, depthwise, grouped and strided layers;
   on CUDA also zoo MobileNet-V2 and EfficientNet-B0) densified on the device in fp64 (exact),
   IEEE fp32, tf32 (CUDA) and bf16, against float64 patch-by-patch on the CPU: scores, labels and
   gradients (fcnseg.bench.equivalence);
3. benchmark: tools/bench.py on the membrane net at 256/1024/2048 (quick: 64), IEEE fp32 and
   bf16 rows, into <out>/ (bench.json, benchmarks.md, bench.png);
4. training: tools/train.py on the demo data for 200 steps (quick: 4) on the device;
5. inference: tools/infer.py over the demo validation folder (quick: ten images) with that checkpoint, and
   check=true on one image (the dense result against patch-by-patch, in IEEE fp32).

The exit status is 1 when a step failed. --out defaults to results/cuda (CUDA) or
results/cpu_check (CPU).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))          # the small converter-feature nets of the tests

import torch  # noqa: E402

from fcnseg import runtime  # noqa: E402
from fcnseg.bench.measure import cpu_model  # noqa: E402
from fcnseg.runtime.precision import cpu_native_bf16, float32_math_state  # noqa: E402


def nets(quick: bool) -> list[dict]:
    """(name, classifier, patch size, image size, output stride): every converter feature."""
    from helpers import ResidualConcat, RNet, SqueezeExciteDepthwise, alexnet_like
    torch.manual_seed(0)
    out = [dict(name="rnet (ceil-mode partial windows, two heads, PReLU)", model=RNet(), patch=None,
                size=(30, 28), stride=1),
           dict(name="squeeze-excitation tail, depthwise, residual, batch norm, two heads",
                model=SqueezeExciteDepthwise(), patch=None, size=(20, 18), stride=1),
           dict(name="residual and concat, functional calls, avg pool, BatchNorm1d", model=ResidualConcat(),
                patch=14, size=(17, 15), stride=1),
           dict(name="alexnet-like (strided, grouped, LRN, overlapping pools)", model=alexnet_like(), patch=83,
                size=(20, 18), stride=1)]
    if not quick:
        import fcnseg
        from fcnseg import zoo
        for name in ("mobilenet_v2", "efficientnet_b0"):     # depthwise + residual; SE tail + depthwise
            m = zoo.create(name, num_classes=5, in_channels=3, width_mult=0.125, padding="valid")
            out.append(dict(name=f"zoo {name} (width 0.125, output stride 32)",
                            model=fcnseg.freeze_batchnorm(m.eval()), patch=None, size=(65, 65), stride=32))
    for n in out:
        n["model"].eval()
    return out


def check_equivalence_all(device, quick: bool) -> dict:
    import fcnseg
    from fcnseg.bench.equivalence import MODES, check_equivalence
    modes = [m for m in MODES if device.type == "cuda" or m != "tf32"]
    rows, ok = [], True
    for spec in nets(quick):
        x = torch.randn(1 if quick else 2, 3, *spec["size"], generator=torch.Generator().manual_seed(1))
        h, w = spec["size"]
        pixels = fcnseg.random_grid_pixels(h, w, spec["stride"], 24 if quick else 64, seed=0)
        for mode in modes:
            t0 = time.perf_counter()
            r = check_equivalence(spec["model"], x, mode, device, patch_size=spec["patch"],
                                  output_stride=spec["stride"], pixels=pixels)
            rows.append({"net": spec["name"], **r.as_dict(), "seconds": round(time.perf_counter() - t0, 2)})
            ok &= r.ok
            print(f"  {spec['name'][:40]:40} {mode:5} {'ok' if r.ok else 'FAILED':6} max rel {r.max_rel:.2e}, "
                  f"labels {100 * r.label_agreement:.2f}%, grad rel {r.grad_max_rel:.2e}, "
                  f"cos {r.grad_min_cosine:.4f}", flush=True)
    return {"status": "ok" if ok else "failed", "rows": rows}


def run(cmd: list[str], log: Path, timeout: float) -> dict:
    """A subprocess with its output in `log`; {status, returncode, seconds, command}."""
    t0 = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        try:
            p = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
            code = p.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    return {"status": "ok" if code == 0 else "failed", "returncode": code, "command": " ".join(cmd),
            "seconds": round(time.perf_counter() - t0, 1), "log": str(log)}


def tail(path: str, lines: int = 3) -> list[str]:
    try:
        return Path(path).read_text().strip().splitlines()[-lines:]
    except OSError:
        return []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:<index> or cpu (default: cuda)")
    ap.add_argument("--quick", action="store_true", help="shrunk sizes and steps (a few minutes on a CPU)")
    ap.add_argument("--out", type=Path, help="results and summary.json (default results/cuda or results/cpu_check)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["tests", "equivalence", "bench", "train", "infer"],
                    help="steps to leave out")
    args = ap.parse_args(argv)
    device = runtime.pick_device(args.device)
    out = (args.out or ROOT / "results" / ("cuda" if device.type == "cuda" else "cpu_check")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    py, quick = sys.executable, args.quick
    dev = str(device)
    summary = {"device": dev, "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "cpu": cpu_model(), "torch": torch.__version__,
               "quick": quick, "bf16_native": bool(torch.cuda.is_bf16_supported() if device.type == "cuda"
                                                   else cpu_native_bf16()),
               "float32_math_default": float32_math_state(), "steps": {}}
    started = time.perf_counter()

    def step(name, fn):
        if name in args.skip:
            summary["steps"][name] = {"status": "skipped", "why": "--skip"}
            return
        print(f"[{name}]", flush=True)
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as e:          # a failed step is recorded, the others still run
            result = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        result.setdefault("seconds", round(time.perf_counter() - t0, 1))
        summary["steps"][name] = result
        print(f"[{name}] {result['status']} in {result['seconds']} s", flush=True)
        if result["status"] == "failed":    # enough to diagnose from a CI log; the whole log is in out/logs
            details = [result["error"]] if "error" in result else tail(result.get("log", ""), 20)
            print("\n".join(f"  {line}" for line in details), flush=True)
        runtime.write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))

    def tests():
        r = run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/"], out / "logs" / "tests.log",
                300)
        r["summary"] = tail(r["log"], 1)
        if device.type != "cuda":
            r["note"] = "no CUDA: the gpu-marked tests skip"
        if r["returncode"] == 5:         # pytest: nothing collected/run
            r["status"] = "ok"
        return r

    def bench():
        sizes = ["64"] if quick else ["256", "1024", "2048"]
        r = run([py, "tools/bench.py", "--device", dev, "--nets", "membrane95", "--sizes", *sizes,
                 "--precision", "fp32", "bf16", "--no-tiling", "--no-profile", "--out-dir", str(out),
                 "--docs", str(out / "benchmarks.md")] + (["--quick"] if quick else []),
                out / "logs" / "bench.log", 420)
        r["tables"] = str(out / "benchmarks.md")
        if (out / "bench.json").exists():
            result = json.loads((out / "bench.json").read_text())
            r["rows"] = [{"side": run_["side"], "fp32_s": run_["forward"]["densify"]["time_s"],
                          **{f"{k}_s": v["time_s"] for k, v in run_["forward"].get("reduced", {}).items()},
                          **{f"{k}_labels": v["label_agreement"]
                             for k, v in run_["forward"].get("reduced", {}).items()}}
                         for n in result["nets"] for run_ in n["runs"]]
            r["precision"] = result.get("precision")
        return r

    def train():
        steps = 4 if quick else 200
        r = run([py, "tools/train.py", f"hydra.run.dir={out / 'train'}", f"trainer.device={dev}",
                 f"trainer.max_steps={steps}", f"trainer.eval_every={steps}", "trainer.precision=auto"],
                out / "logs" / "train.log", 240 if not quick else 300)
        r["steps"] = steps
        metrics = out / "train" / "metrics.json"
        if metrics.exists():
            r["metrics"] = {k: v for k, v in json.loads(metrics.read_text()).items() if not isinstance(v, (list, dict))}
        return r

    def infer():
        ck = out / "train" / "best.pt"
        if not ck.exists():
            return {"status": "failed", "error": f"no checkpoint at {ck} (the training step failed or was skipped)"}
        images = ROOT / "data" / "fashion_scenes" / "val" / "images"
        folder = images / "00000*.png" if quick else images          # quick: ten images (a glob)
        r = run([py, "tools/infer.py", f"checkpoint={ck}", f"input={folder}", f"output={out / 'labels'}",
                 f"device={dev}", "precision=auto", "overwrite=true", "progress=false"],
                out / "logs" / "infer.log", 180)
        first = sorted(images.iterdir())[0]
        c = run([py, "tools/infer.py", f"checkpoint={ck}", f"input={first}", f"output={out / 'check'}",
                 f"device={dev}", "check=true", "overwrite=true", "progress=false"], out / "logs" / "check.log", 120)
        r["check"] = {**c, "summary": tail(c["log"], 2)}
        if c["status"] != "ok":
            r["status"] = "failed"
        summary_json = out / "labels" / "summary.json"
        if summary_json.exists():
            r["counts"] = json.loads(summary_json.read_text()).get("counts")
        return r

    step("tests", tests)
    step("equivalence", lambda: check_equivalence_all(device, quick))
    step("bench", bench)
    step("train", train)
    step("infer", infer)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["ok"] = all(s["status"] in ("ok", "skipped") for s in summary["steps"].values())
    runtime.write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    print(f"{'ok' if summary['ok'] else 'FAILED'}: {out / 'summary.json'} ({summary['seconds']:.0f} s)")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
