"""Build the "Fashion-MNIST scenes" demo dataset that ships in data/fashion_scenes.

Each scene is a gray canvas with 2-3 Fashion-MNIST items pasted at random scale and position
over a smooth, cluttered background; later items lie on top of earlier ones, but every item keeps
most of its pixels visible. Every garment pixel is labelled with its item's class (1..10), the rest
is background (0). Because background clutter and garments share intensities, and because
garment classes differ by shape rather than by gray value, a pixel's class can only be told from
its context: the garment it belongs to.

The output is a folder dataset (see docs/data.md):

    OUT/classes.json                       names, palette, mean/std of the train split, in_channels=1
    OUT/{train,val}/images/NNNNNN.png      gray uint8 canvases
    OUT/{train,val}/masks/NNNNNN.png       uint8 class indices

Train scenes use items of the Fashion-MNIST training file, val scenes items of the t10k file,
so no garment appears in both splits. The build is deterministic: the same source files, seed and
counts give byte-identical PNGs.

    python tools/make_demo_data.py                       # Debian package dataset-fashion-mnist
    python tools/make_demo_data.py --source DIR          # upstream *-ubyte.gz files in DIR

With --patches it instead cuts the labelled-patch demo set (data/fashion_patches, the
torchvision ImageFolder layout, see build_patches) from the scenes in --scenes:

    python tools/make_demo_data.py --patches             # data/fashion_scenes -> data/fashion_patches
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import struct
from pathlib import Path

import cv2
import numpy as np

from fcnseg.data.palette import default_palette

DEBIAN_SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ["background", "t-shirt/top", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle boot"]
SPLIT_FILES = {"train": "train", "val": "t10k"}  # output split -> Fashion-MNIST file prefix


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip-compressed or not): uint8 images ``(N, 28, 28)`` or labels ``(N,)``."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    if magic >> 8 != 0x08:  # 0x0000 08 0D: unsigned byte data, D dimensions
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x}); use the *-ubyte(.gz) files")
    ndim = magic & 0xFF
    shape = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values, file holds {arr.size}: truncated download?")
    return arr.reshape(shape)


def load_split(source: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    def find(kind: str) -> Path:
        for name in (f"{prefix}-{kind}-idx{1 if kind == 'labels' else 3}-ubyte.gz",
                     f"{prefix}-{kind}-idx{1 if kind == 'labels' else 3}-ubyte"):
            if (source / name).is_file():
                return source / name
        raise SystemExit(f"{source}: {prefix}-{kind}-idx*-ubyte(.gz) not found. Install the Debian package "
                         "dataset-fashion-mnist, or download the four *-ubyte.gz files from "
                         "https://github.com/zalandoresearch/fashion-mnist (data/fashion) and pass --source DIR")
    images, labels = read_idx(find("images")), read_idx(find("labels"))
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise SystemExit(f"{source}: {prefix} images {images.shape} and labels {labels.shape} do not match")
    return images, labels


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth shading plus faint clutter strokes whose gray values overlap the garments'."""
    low = rng.uniform(0.0, 1.0, (5, 5)).astype(np.float32)
    shade = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)  # (S, S) smooth field
    canvas = np.clip(8.0 + 40.0 * shade, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        p0 = tuple(int(v) for v in rng.integers(0, size, 2))
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.line(canvas, p0, p1, int(rng.integers(50, 110)), int(rng.integers(1, 3)), lineType=cv2.LINE_8)
    return canvas


def make_scene(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, size: int,
               min_items: int, max_items: int, scale: tuple[float, float], threshold: int,
               min_visible: float, tries: int = 30) -> tuple[np.ndarray, np.ndarray]:
    canvas = background(rng, size)  # (S, S) uint8
    owner = np.zeros((size, size), np.int32)  # which pasted item (1-based) each pixel shows, 0 = background
    areas: list[int] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(min_items, max_items + 1))):
        idx = int(rng.integers(images.shape[0]))
        side = int(round(28 * rng.uniform(*scale)))
        item = cv2.resize(images[idx], (side, side), interpolation=cv2.INTER_LINEAR)
        fg = item > threshold  # (side, side) the garment's own pixels
        area = int(fg.sum())
        for _ in range(tries):
            y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
            trial = owner.copy()
            trial[y:y + side, x:x + side][fg] = len(areas) + 1
            visible = np.bincount(trial.ravel(), minlength=len(areas) + 2)[1:len(areas) + 1]
            if all(v >= min_visible * a for v, a in zip(visible, areas)):
                owner = trial
                canvas[y:y + side, x:x + side][fg] = item[fg]
                areas.append(area)
                classes.append(int(labels[idx]) + 1)
                break
        # an item that cannot be placed without hiding another one is dropped
    lut = np.array([0] + classes, np.uint8)
    return canvas, lut[owner]


def encode_png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _format_meta(meta: dict) -> str:
    """classes.json with one palette colour per line, so that it stays readable and diffs well."""
    rows = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in meta.items() if k != "palette"]
    colours = ",\n    ".join(json.dumps(c) for c in meta["palette"])
    rows.insert(1, f'  "palette": [\n    {colours}\n  ]')
    return "{\n" + ",\n".join(rows) + "\n}\n"


def build(source: Path, out: Path, n_train: int, n_val: int, size: int, seed: int,
          min_items: int = 2, max_items: int = 3, scale: tuple[float, float] = (1.0, 1.6),
          threshold: int = 20, min_visible: float = 0.8) -> dict:
    if size < int(np.ceil(28 * scale[1])):
        raise SystemExit(f"--size {size} is smaller than the largest item ({int(np.ceil(28 * scale[1]))} px)")
    if out.exists():
        shutil.rmtree(out)  # stale files from a larger earlier build would otherwise stay in the split
    stats = np.zeros(2, np.float64)  # sum, sum of squares of train pixels in [0, 1]
    n_pixels = 0
    class_pixels = {}
    for split, count in (("train", n_train), ("val", n_val)):
        images, labels = load_split(source, SPLIT_FILES[split])
        # One generator per split, derived from the seed, so --n-val does not change the train scenes.
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        (out / split / "images").mkdir(parents=True)
        (out / split / "masks").mkdir(parents=True)
        hist = np.zeros(len(CLASS_NAMES), np.int64)
        for i in range(count):
            img, mask = make_scene(rng, images, labels, size, min_items, max_items, scale, threshold, min_visible)
            (out / split / "images" / f"{i:06d}.png").write_bytes(encode_png(img))
            (out / split / "masks" / f"{i:06d}.png").write_bytes(encode_png(mask))
            hist += np.bincount(mask.ravel(), minlength=len(CLASS_NAMES))
            if split == "train":
                x = img.astype(np.float64) / 255.0
                stats += (x.sum(), (x * x).sum())
                n_pixels += x.size
        class_pixels[split] = hist.tolist()
    if n_pixels:
        mean = stats[0] / n_pixels
        std = float(np.sqrt(max(stats[1] / n_pixels - mean * mean, 1e-12)))
    else:  # no train scenes requested: fall back to the gray ImageNet statistics
        mean, std = 0.449, 0.226
    meta = {"names": CLASS_NAMES, "palette": default_palette(len(CLASS_NAMES)),
            "mean": [round(float(mean), 6)], "std": [round(std, 6)], "in_channels": 1}
    (out / "classes.json").write_text(_format_meta(meta))
    return {"class_pixels": class_pixels, "mean": meta["mean"], "std": meta["std"]}


def class_folder_name(name: str) -> str:
    """A class name as a folder name: '/' and ' ' (t-shirt/top, ankle boot) become '-'."""
    return name.replace("/", "-").replace(" ", "-")


def build_patches(scenes: Path, out: Path, patch_size: int, per_class: dict[str, int], seed: int) -> dict:
    """Labelled patches cut from a scene set in the folder layout (classes.json, {split}/images,
    {split}/masks) into ``out/{split}/<class>/<scene>_<row>_<col>.png``.

    A patch is labelled with the class of its centre pixel under the project's convention (the
    patch for pixel (i, j) starts at (i - (P-1)//2, j - (P-1)//2)), so a classifier trained on them
    labels pixel (i, j) of a whole image exactly as the dense network computes it. Only patches that
    lie wholly inside their scene are cut (no padding is invented). ``per_class[split]`` centres are
    drawn per class, uniformly among that class's pixels of the split, without replacement, so rare
    garment classes are as frequent as the background; a class with fewer pixels gives them all.
    Patches of one split come from that split's scenes only. The output folder is replaced.
    """
    from fcnseg.data.folder import list_images, read_classes_json
    from fcnseg.data.io import read_image, read_mask

    meta = read_classes_json(scenes)
    if "names" not in meta:
        raise SystemExit(f"{scenes}: no classes.json with class names; build the scenes first "
                         "(python tools/make_demo_data.py)")
    names = [class_folder_name(n) for n in meta["names"]]
    if out.exists():
        shutil.rmtree(out)  # stale patches of an earlier, larger build would stay in the classes
    lo, hi = (patch_size - 1) // 2, patch_size // 2  # rows above / below the centre pixel
    counts = {}
    for split_index, (split, n_per_class) in enumerate(per_class.items()):
        paths = list_images(scenes / split / "images")
        images = [read_image(p)[:, :, 0] for p in paths]  # (H, W) gray uint8 scenes
        masks = [read_mask(scenes / split / "masks" / f"{p.stem}.png") for p in paths]
        centres: dict[int, list[np.ndarray]] = {k: [] for k in range(len(names))}
        for s, m in enumerate(masks):
            h, w = m.shape
            ii, jj = np.mgrid[lo:h - hi, lo:w - hi]  # centres whose patch fits in the scene
            ii, jj = ii.ravel(), jj.ravel()
            labels = m[ii, jj]
            for k in centres:
                keep = labels == k
                centres[k].append(np.stack([np.full(int(keep.sum()), s), ii[keep], jj[keep]], 1))
        rng = np.random.default_rng([seed, split_index])
        counts[split] = {}
        for k, name in enumerate(names):
            cand = np.concatenate(centres[k]) if centres[k] else np.zeros((0, 3), int)  # (M, 3) scene, i, j
            pick = cand[np.sort(rng.choice(len(cand), min(n_per_class, len(cand)), replace=False))]
            (out / split / name).mkdir(parents=True)
            for s, i, j in pick:
                patch = images[s][i - lo:i + hi + 1, j - lo:j + hi + 1]  # (P, P)
                (out / split / name / f"{paths[s].stem}_{i:02d}_{j:02d}.png").write_bytes(encode_png(patch))
            counts[split][name] = len(pick)
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=DEBIAN_SOURCE,
                    help="folder with the Fashion-MNIST *-ubyte.gz files (default: %(default)s, "
                         "from the Debian package dataset-fashion-mnist)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder, replaced (default: data/fashion_scenes, or data/fashion_patches "
                         "with --patches)")
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--size", type=int, default=96, help="canvas side in pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-items", type=int, default=2)
    ap.add_argument("--max-items", type=int, default=3)
    ap.add_argument("--min-scale", type=float, default=1.0, help="smallest item size, as a multiple of 28 px")
    ap.add_argument("--max-scale", type=float, default=1.6, help="largest item size, as a multiple of 28 px")
    ap.add_argument("--min-visible", type=float, default=0.8,
                    help="fraction of each item's pixels that later items may not cover")
    ap.add_argument("--patches", action="store_true",
                    help="cut the labelled-patch demo set from the scenes in --scenes instead")
    ap.add_argument("--scenes", type=Path, default=Path("data/fashion_scenes"),
                    help="--patches: the scene set to cut from (default: %(default)s)")
    ap.add_argument("--patch-size", type=int, default=44, help="--patches: patch side in pixels")
    ap.add_argument("--per-class-train", type=int, default=40, help="--patches: train patches per class")
    ap.add_argument("--per-class-val", type=int, default=15, help="--patches: val patches per class")
    args = ap.parse_args(argv)
    if args.patches:
        out = args.out or Path("data/fashion_patches")
        counts = build_patches(args.scenes, out, args.patch_size,
                               {"train": args.per_class_train, "val": args.per_class_val}, args.seed)
        for split, per in counts.items():
            print(f"{split}: {sum(per.values())} patches of {args.patch_size}x{args.patch_size} in {out / split} "
                  f"({', '.join(f'{n} {c}' for n, c in per.items())})")
        return
    args.out = args.out or Path("data/fashion_scenes")
    info = build(args.source, args.out, args.n_train, args.n_val, args.size, args.seed,
                 min_items=args.min_items, max_items=args.max_items, scale=(args.min_scale, args.max_scale),
                 min_visible=args.min_visible)
    print(f"wrote {args.n_train} train and {args.n_val} val scenes ({args.size}x{args.size}) to {args.out}")
    print(f"train mean {info['mean'][0]:.4f} std {info['std'][0]:.4f}")
    for split, hist in info["class_pixels"].items():
        total = max(sum(hist), 1)
        print(f"{split} class pixel share: " + ", ".join(f"{n} {h / total:.1%}" for n, h in zip(CLASS_NAMES, hist)))


if __name__ == "__main__":
    main()
