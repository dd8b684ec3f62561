"""Draw an image, its label map and the score map of one class, from tools/infer.py outputs.

    python tools/infer.py checkpoint=best.pt input=scene.png output=out save_scores=true
    python tools/show_scores.py --checkpoint best.pt --image scene.png --results out --class trouser \
        --out scene_trouser.png

The label map is out/<stem>.png; the score map is the softmax probability of the class
at every pixel, from out/<stem>.scores.npy (float16 (K, H, W) class scores, output
stride 1). Class names and colours come from the checkpoint.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def plot_scores(out: Path, image: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int,
                names: list[str], palette: list[list[int]]) -> None:
    """image (H, W, C) uint8, labels (H, W), scores (K, H, W) -> a 3-panel PNG at `out`."""
    from fcnseg.extras import require
    matplotlib = require("matplotlib", "tools/show_scores.py")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from fcnseg.data.palette import colorize
    from fcnseg.infer.outputs import display_rgb
    from fcnseg.runtime import atomic_path

    s = scores.astype(np.float64)
    prob = np.exp(s - s.max(0))
    prob = prob[k] / prob.sum(0)  # (H, W) softmax probability of class k
    fig, ax = plt.subplots(1, 3, figsize=(10.5, 3.6))
    ax[0].imshow(display_rgb(image))
    ax[0].set_title("image")
    ax[1].imshow(colorize(labels, palette, ignore_index=None))
    ax[1].set_title("label map (argmax)")
    shown = [c for c in np.unique(labels)]
    ax[1].legend(handles=[Patch(color=np.asarray(palette[c]) / 255, label=names[c]) for c in shown],
                 loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    im = ax[2].imshow(prob, vmin=0, vmax=1, cmap="viridis")
    ax[2].set_title(f"P({names[k]}) per pixel")
    fig.colorbar(im, ax=ax[2], fraction=0.046, pad=0.04)
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint inference used")
    ap.add_argument("--image", type=Path, required=True, help="the input image")
    ap.add_argument("--results", type=Path, required=True,
                    help="the folder holding <stem>.png and <stem>.scores.npy of that image")
    ap.add_argument("--class", dest="cls", required=True, help="class name (or index) of the score map")
    ap.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = ap.parse_args(argv)

    from PIL import Image

    from fcnseg.checkpoint import load_checkpoint
    from fcnseg.data.io import read_image
    from fcnseg.data.palette import resolve_palette

    ck = load_checkpoint(args.checkpoint)
    k_total = int(ck["num_classes"])
    names = list(ck.get("class_names") or [str(k) for k in range(k_total)])
    if args.cls in names:
        k = names.index(args.cls)
    elif args.cls.isdigit() and int(args.cls) < k_total:
        k = int(args.cls)
    else:
        raise SystemExit(f"--class {args.cls!r}: not a class of {args.checkpoint}; its classes are {names}")
    labels_path = args.results / f"{args.image.stem}.png"
    scores_path = args.results / f"{args.image.stem}.scores.npy"
    for p in (labels_path, scores_path):
        if not p.is_file():
            raise SystemExit(f"{p} not found; run tools/infer.py on {args.image} with output={args.results} "
                             f"save_scores=true first")
    scores = np.load(scores_path)
    labels = np.asarray(Image.open(labels_path))
    if scores.shape[1:] != labels.shape:
        raise SystemExit(f"{scores_path} is {scores.shape[1:]} but the label map is {labels.shape}: the score "
                         f"map must be at output stride 1 (infer's default)")
    plot_scores(args.out, read_image(args.image), labels, scores, k, names,
                resolve_palette(ck.get("palette"), k_total))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
