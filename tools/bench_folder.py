"""Benchmark: a folder run end to end against the engine on the same images in memory.

    python tools/bench_folder.py --checkpoint outputs/demo/best.pt             # 2,000 images, results/folder.json
    python tools/bench_folder.py --checkpoint outputs/demo/best.pt --images 40 --out results/quick/folder.json

1. A deterministic folder of gray PNGs of mixed sizes (sides 256-1024) is written once.
2. Engine: the same predictor and settings as tools/infer.py, a Python loop over the decoded
   images in chunks (decoding not timed): `predictor.predict_batch(chunk)`. Pixels per second.
3. End to end: `python tools/infer.py` on the folder (wall clock, start-up included).
   The ratio end-to-end / engine is the share of the engine's speed a folder run keeps.
4. `torchrun --nproc_per_node 2` (one thread per rank) on the folder: each rank's finish
   time, and the spread between the first and the last rank to finish.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SIDES = (256, 384, 512, 640, 768, 1024)


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "")
    import torch
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(), "torch": torch.__version__,
            "load_average_1_5_15": list(os.getloadavg())}


def make_folder(folder: Path, n: int, seed: int = 0) -> list[tuple[int, int]]:
    """n gray PNGs, sides drawn from SIDES (squares and rectangles), smooth structure plus
    noise; written once (a manifest records what is there)."""
    from PIL import Image
    manifest = folder / "manifest.json"
    rng = np.random.default_rng(seed)
    sizes = [(int(rng.choice(SIDES)), int(rng.choice(SIDES))) for _ in range(n)]
    if manifest.exists() and json.loads(manifest.read_text()) == {"seed": seed, "sizes": sizes}:
        return sizes
    folder.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        y, x = np.mgrid[0:h, 0:w]
        f1, f2 = rng.uniform(0.005, 0.05, 2)
        img = 128 + 60 * np.sin(x * f1 + i) * np.cos(y * f2) + rng.normal(0, 12, (h, w))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"img{i:05d}.png", compress_level=1)
    manifest.write_text(json.dumps({"seed": seed, "sizes": sizes}))
    return sizes


def engine(args, files: list[Path]) -> dict:
    """Pixels per second of the predictor on decoded images, decoding not timed."""
    from fcnseg import runtime
    from fcnseg.data.io import read_image
    from fcnseg.infer import load_predictor
    pred = load_predictor(args.checkpoint, device=args.device, output_stride=args.output_stride,
                          batch_size=args.batch_size, memory_mb=args.memory_mb)
    pred.tile()  # the automatic tile size is probed once, as a folder run does before its first image
    chunk = 4 * args.batch_size  # what a folder run holds waiting to be stacked
    seconds, pixels = 0.0, 0
    with runtime.reuse_host_memory(pred.device):
        for k in range(0, len(files), chunk):
            images = [read_image(f) for f in files[k:k + chunk]]
            t0 = time.perf_counter()
            pred.predict_batch(images)
            seconds += time.perf_counter() - t0
            pixels += sum(im.shape[0] * im.shape[1] for im in images)
    return {"seconds": round(seconds, 2), "pixels": pixels, "pixels_per_s": round(pixels / seconds)}


def infer_args(args, folder: Path, out: Path) -> list[str]:
    return [str(ROOT / "tools" / "infer.py"), f"checkpoint={args.checkpoint}", f"input={folder}",
            f"output={out}", f"device={args.device}", f"output_stride={args.output_stride}",
            f"batch_size={args.batch_size}", f"memory_mb={args.memory_mb}", "overwrite=true",
            "progress=false"]


def end_to_end(args, folder: Path, pixels: int) -> dict:
    out = Path(args.work) / "out_e2e"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, *infer_args(args, folder, out)], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"tools/infer.py failed ({r.returncode}):\n{r.stderr[-3000:]}")
    m = re.search(r"finished its \d+ images in ([\d.]+) s", r.stdout)
    in_run = float(m.group(1))  # first image read to last result written: start-up left out
    return {"seconds": round(seconds, 2), "pixels": pixels, "pixels_per_s": round(pixels / seconds),
            "seconds_in_run": in_run, "pixels_per_s_in_run": round(pixels / in_run)}


def two_ranks(args, folder: Path) -> dict:
    out = Path(args.work) / "out_torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        *infer_args(args, folder, out)], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"torchrun failed ({r.returncode}):\n{r.stderr[-3000:]}")
    finish = {int(m.group(1)): float(m.group(2))
              for m in re.finditer(r"rank (\d+)/2: finished its \d+ images in ([\d.]+) s", r.stdout + r.stderr)}
    spread = (max(finish.values()) - min(finish.values())) / max(finish.values())
    return {"seconds": round(seconds, 2), "rank_finish_s": finish, "spread": round(spread, 4),
            "target_spread": 0.10, "met": spread <= 0.10}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--work", default="bench-folder", help="folder for the images and the results")
    ap.add_argument("--output-stride", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--memory-mb", type=float, default=2048)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-torchrun", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "results" / "folder.json"))
    args = ap.parse_args(argv)
    args.checkpoint = os.path.abspath(args.checkpoint)
    folder = Path(args.work) / "images"
    sizes = make_folder(folder, args.images)
    files = sorted(folder.glob("img*.png"))
    result = {"machine": machine(), "images": len(files), "sides": list(SIDES),
              "pixels": sum(h * w for h, w in sizes), "output_stride": args.output_stride,
              "batch_size": args.batch_size, "memory_mb": args.memory_mb, "device": args.device}
    result["engine"] = engine(args, files)
    print("engine", result["engine"], flush=True)
    result["end_to_end"] = end_to_end(args, folder, result["pixels"])
    ratio = result["end_to_end"]["pixels_per_s"] / result["engine"]["pixels_per_s"]
    result["ratio"] = {"value": round(ratio, 3), "target": 0.85, "met": ratio >= 0.85,
                       "in_run": round(result["end_to_end"]["pixels_per_s_in_run"]
                                       / result["engine"]["pixels_per_s"], 3)}
    print("end to end", result["end_to_end"], "ratio", result["ratio"], flush=True)
    if not args.skip_torchrun:
        result["torchrun_2_ranks"] = two_ranks(args, folder)
        print("torchrun", result["torchrun_2_ranks"], flush=True)
    result["machine"]["load_average_after"] = list(os.getloadavg())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
