"""What a run leaves behind: IoU table, metrics.json/csv, steps.csv (and TensorBoard events
with logger=tensorboard), curves.png, val_grid.png."""
import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from fcnseg.data.palette import colorize
from fcnseg.extras import require
from fcnseg.runtime import atomic_path, write_text_atomic


def iou_table(metrics, class_names, column=("per_class_iou", "IoU"),
              totals=(("miou", "mean IoU"), ("pixel_acc", "pixel accuracy"))):
    """One row per class of metrics[column key], then the totals (key, label)."""
    key, title = column
    lines = [f"{'class':<20} {title:>9}", "-" * 30]
    for name, v in zip(class_names, metrics[key]):
        lines.append(f"{name:<20} {'absent' if math.isnan(v) else f'{v:.4f}':>9}")
    lines += ["-" * 30] + [f"{label:<20} {metrics[k]:>9.4f}" for k, label in totals]
    return "\n".join(lines)


def accuracy_table(metrics, class_names):
    """The table of a patch classifier: accuracy per class, then overall and mean class accuracy."""
    return iou_table(metrics, class_names, ("per_class_accuracy", "accuracy"),
                     (("accuracy", "accuracy"), ("mean_class_accuracy", "mean class accuracy")))


def _json_safe(x):
    if isinstance(x, float) and math.isnan(x):
        return None  # JSON has no NaN; an absent class is null
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    return x


def write_json(path, data):
    write_text_atomic(path, json.dumps(_json_safe(data), indent=2) + "\n")


def write_csv(path, history):
    if not history:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    write_text_atomic(path, buf.getvalue())


class ScalarLog:
    """Per-step scalars (step, epoch, loss, lr, seconds, images per second), one CSV row per
    optimiser step, appended as the run goes so the file is current while it runs. A
    resumed run keeps the rows up to the step it resumes from (keep_until); a fresh one
    (keep_until=0) starts the file anew."""

    FIELDS = ("step", "epoch", "loss", "lr", "seconds", "images_per_s")

    def __init__(self, path, keep_until=0):
        self.path = Path(path)
        kept = []
        if keep_until and self.path.is_file():
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if r.get("step", "").isdigit()
                        and int(r["step"]) <= keep_until]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.FIELDS, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(kept)
        write_text_atomic(self.path, buf.getvalue())

    def append(self, **row):
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.FIELDS, lineterminator="\n").writerow(
                {k: ("" if row.get(k) is None else row[k]) for k in self.FIELDS})


class TensorBoardLog:
    """logger=tensorboard: the per-step scalars (train/loss, train/lr, train/images_per_s, ...)
    and each validation's numbers (val/miou, val/pixel_acc, ...) as TensorBoard event files in
    the run directory, so ``tensorboard --logdir outputs/train`` shows every run. A resumed
    run purges the events after the step it resumes from, as steps.csv drops those rows."""

    SKIP = ("step", "epoch")  # the x axis, not a curve

    def __init__(self, run_dir, resume_step=0):
        self.writer = self.writer_class()(log_dir=str(run_dir), purge_step=resume_step or None)

    @staticmethod
    def writer_class():
        """torch's SummaryWriter; without the tensorboard package an error naming the extra."""
        return require("torch.utils.tensorboard", "logger=tensorboard").SummaryWriter

    def _scalars(self, prefix, step, values):
        for name, value in values.items():
            if name not in self.SKIP and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def append(self, **row):
        """One optimiser step's scalars (ScalarLog.append's row)."""
        self._scalars("train", row["step"], row)

    def validation(self, step, row):
        """A validation's history row: its numbers, under val/ (the val_ prefix dropped)."""
        self._scalars("val", step, {k.removeprefix("val_"): v for k, v in row.items()})
        self.writer.flush()

    def close(self):
        self.writer.close()


def plot_curves(path, history, scores=(("val_miou", "mIoU"), ("val_pixel_acc", "pixel acc"))):
    """Training loss and the validation scores (history key, label) per epoch."""
    matplotlib = require("matplotlib", "the training curves (curves.png)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(ep, [h["train_loss"] for h in history], "o-")
    ax[0].set(xlabel="epoch", ylabel="train loss", title="training loss")
    for (key, label), style in zip(scores, ("o-", "s--", "^:")):
        ax[1].plot(ep, [h[key] for h in history], style, label=label)
    ax[1].set(xlabel="epoch", ylim=(0, 1), title="validation")
    ax[1].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_grid(path, images, masks, preds, palette, mean, std, ignore_index=255):
    """Rows of image | ground truth | prediction. images (N, C, H, W) normalised."""
    matplotlib = require("matplotlib", "the validation pictures (val_grid.png)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(images)
    fig, ax = plt.subplots(n, 3, figsize=(6.6, 2.2 * n), squeeze=False)
    mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(std, np.float32).reshape(-1, 1, 1)
    scale = 255.0 if mean.max() > 1 else 1.0  # statistics given on the 0-255 scale
    for r in range(n):
        img = (images[r].numpy() * std + mean) / scale  # back to [0, 1] (C, H, W)
        img = np.clip(img.transpose(1, 2, 0), 0, 1)
        img = img[..., 0] if img.shape[2] == 1 else img[..., :3]
        ax[r, 0].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        ax[r, 1].imshow(colorize(masks[r].numpy(), palette, ignore_index))
        ax[r, 2].imshow(colorize(preds[r].numpy(), palette, ignore_index))
        for a in ax[r]:
            a.axis("off")
    for a, t in zip(ax[0], ("image", "ground truth", "prediction")):
        a.set_title(t)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
