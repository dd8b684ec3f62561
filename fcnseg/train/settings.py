"""Typed training settings: the one place where every training default lives.

`TrainSettings.from_dict(cfg)` turns the plain nested dicts a config system produces (the
groups of conf/train.yaml, as tools/train.py passes them) into these dataclasses, refusing
unknown keys and impossible values with a `SettingsError` that names the setting by its
dotted path (`trainer.output_stride`). The YAML files of conf/trainer, conf/optim,
conf/sched and conf/loss repeat these defaults so `--help` shows them; a test asserts that
they agree field by field.

Settings that depend on the model (`output_stride="auto"`) are resolved once the model is
built, by `resolve_output_stride`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fcnseg.settings import (
    AUTO,
    SettingsError,
    build_section,
    check_auto_or_positive,
    check_choice,
    check_device,
    check_positive,
    check_precision,
)


# ---------------------------------------------------------------------------- trainer
@dataclass
class TrainerSettings:
    """How the optimisation runs. Counted in optimiser steps (one step = one batch)."""
    method: str = "dense"         # dense: whole images through the densified net | patch: one patch per pixel
    steps: Any = "auto"           # optimiser steps of the run (the schedule's length) | auto: see schedule.py
    epochs: int | None = None     # instead of steps: passes over the training set
    max_steps: int | None = None  # hard cap on the steps whatever the budget (quick checks)
    eval_every: int = 250         # validation, checkpoints, curves and grid every N steps (and at the end)
    device: str = "auto"          # auto: CUDA when present, else CPU | cpu | cuda | cuda:<index>
    precision: str = "auto"       # auto | fp32 (IEEE) | tf32 | bf16 | fp16 (+ grad scaler): fcnseg.runtime.precision
    channels_last: Any = "auto"   # auto: on (NHWC is faster for the dilated layers, CPU too) | true | false
    output_stride: Any = "auto"   # auto: 2 for a patch classifier trained densely, else 1 | an integer
    sample_fraction: float = 1.0  # fraction of labelled pixels per image that enter the loss
    balance_classes: bool = False  # draw pixels with probability 1/(class pixels in the image)
    batch_size: int = 8
    val_batch_size: int = 20
    num_workers: Any = "auto"     # data loading processes | auto: 0 on CPU, 4 per GPU
    seed: int = 0
    deterministic: bool = False
    patch_memory_mb: Any = "auto"  # patch method: activation budget of one micro-batch | auto
    memory_limit_mb: Any = "auto"  # refuse a step estimated above this | auto: the free memory
    grid_images: int = 4          # validation images in val_grid.png

    def __post_init__(self):
        check_choice("trainer.method", self.method, ("dense", "patch"))
        check_auto_or_positive("trainer.steps", self.steps)
        check_positive("trainer.epochs", self.epochs, allow_none=True)
        if self.max_steps == 0 and not isinstance(self.max_steps, bool):
            raise SettingsError("trainer.max_steps", "0 would train nothing; to score a checkpoint without "
                                "training, run python tools/evaluate.py checkpoint=PATH")
        check_positive("trainer.max_steps", self.max_steps, allow_none=True)
        check_positive("trainer.eval_every", self.eval_every)
        check_device("trainer.device", self.device)
        check_precision("trainer.precision", self.precision)
        check_choice("trainer.channels_last", self.channels_last, ("auto", True, False))
        check_auto_or_positive("trainer.output_stride", self.output_stride)
        if not 0.0 < float(self.sample_fraction) <= 1.0:
            raise SettingsError("trainer.sample_fraction", f"must be in (0, 1], got {self.sample_fraction}")
        check_positive("trainer.batch_size", self.batch_size)
        check_positive("trainer.val_batch_size", self.val_batch_size)
        if self.num_workers != AUTO and (not isinstance(self.num_workers, int) or isinstance(self.num_workers, bool)
                                         or self.num_workers < 0):
            raise SettingsError("trainer.num_workers", f"must be auto or an integer >= 0, got {self.num_workers!r}")
        check_auto_or_positive("trainer.patch_memory_mb", self.patch_memory_mb, float)
        check_auto_or_positive("trainer.memory_limit_mb", self.memory_limit_mb, float)
        if not isinstance(self.grid_images, int) or self.grid_images < 0:
            raise SettingsError("trainer.grid_images", f"must be >= 0, got {self.grid_images!r}")


# ------------------------------------------------------------------------------ model
@dataclass
class ModelSettings:
    """The recipe of the network: a zoo name or a segmentation_models_pytorch architecture."""
    builder: str = "zoo"          # zoo: fcnseg.zoo.create | smp: segmentation_models_pytorch.create_model
    name: str = "patchnet"
    kwargs: dict = field(default_factory=dict)
    pad_mode: str = "constant"    # how pixels near the border get their context (patch classifiers)
    pad_value: float = 0.0        # for pad_mode=constant, in normalised units (0 = the dataset mean)

    def __post_init__(self):
        check_choice("model.builder", self.builder, ("zoo", "smp"))
        check_choice("model.pad_mode", self.pad_mode, ("constant", "reflect", "replicate"))
        self.pad_value = float(self.pad_value)


# ------------------------------------------------------------------------------- data
@dataclass
class DataSettings:
    """Which dataset; keys other than these go to the dataset class (`options`)."""
    kind: str = "folder"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    options: dict = field(default_factory=dict)  # e.g. num_classes, in_channels for the folder layout

    def __post_init__(self):
        if self.root in (None, "", "???"):
            raise SettingsError("data.root", "is not set; give the dataset's directory")

    @classmethod
    def from_dict(cls, values) -> "DataSettings":
        """The data group as a config file writes it: keys other than the fields are options."""
        data = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)} - {"options"}
        options = {k: data.pop(k) for k in list(data) if k not in known}
        return build_section("data", cls, dict(data, options=options))


# -------------------------------------------------------------------------- optimiser
@dataclass
class AdamW:
    name: str = "adamw"
    lr: float = 0.003
    weight_decay: float = 0.0001
    betas: tuple = (0.9, 0.999)


@dataclass
class SGD:
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0001
    nesterov: bool = False


OPTIMIZERS = {"adamw": AdamW, "sgd": SGD}


# --------------------------------------------------------------------------- schedule
@dataclass
class Cosine:
    """Per-step cosine decay from optim.lr to min_lr_ratio * optim.lr."""
    name: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01


@dataclass
class Poly:
    """Per-step lr * (1 - t)^power, the usual segmentation schedule."""
    name: str = "poly"
    warmup_steps: int = 0
    power: float = 0.9


@dataclass
class StepDecay:
    """lr * gamma^(step // step_size): decays every step_size optimiser steps."""
    name: str = "step"
    warmup_steps: int = 0
    step_size: int = 400
    gamma: float = 0.1


@dataclass
class Constant:
    name: str = "constant"
    warmup_steps: int = 0


SCHEDULES = {"cosine": Cosine, "poly": Poly, "step": StepDecay, "constant": Constant}


# ------------------------------------------------------------------------------- loss
@dataclass
class CrossEntropy:
    """Mean over the sampled labelled pixels of the batch (255 = ignored)."""
    name: str = "ce"
    class_weights: Any = "auto"   # null | auto: (median class frequency / frequency)^0.5 | one per class
    label_smoothing: float = 0.0


@dataclass
class Dice:
    name: str = "dice"


@dataclass
class Focal:
    name: str = "focal"
    gamma: float = 2.0


@dataclass
class Lovasz:
    name: str = "lovasz"


LOSSES = {"ce": CrossEntropy, "dice": Dice, "focal": Focal, "lovasz": Lovasz}


@dataclass
class AugSettings:
    """albumentations transforms [{name: <class>, **kwargs}], applied jointly to image and mask."""
    transforms: list = field(default_factory=list)


# ------------------------------------------------------------------------------- all
LOGGERS = ("csv", "tensorboard")  # where per-step scalars go besides train.log


@dataclass
class TrainSettings:
    model: ModelSettings
    data: DataSettings
    optim: Any = field(default_factory=AdamW)
    sched: Any = field(default_factory=Cosine)
    loss: Any = field(default_factory=CrossEntropy)
    aug: AugSettings = field(default_factory=AugSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    resume: Any = False           # False | True: <run_dir>/last.pt | a checkpoint path
    logger: str = "csv"           # csv: steps.csv | tensorboard: steps.csv and TensorBoard events in the run dir

    def __post_init__(self):
        check_choice("logger", self.logger, LOGGERS)

    @classmethod
    def from_dict(cls, cfg: dict) -> "TrainSettings":
        """Plain nested dicts (one per group) -> settings; unknown keys are errors."""
        cfg = dict(cfg)
        unknown = set(cfg) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SettingsError(sorted(unknown)[0], f"unknown setting; the groups are "
                                f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        for required in ("model", "data"):
            if not cfg.get(required):
                raise SettingsError(required, "is missing")
        return cls(
            model=build_section("model", ModelSettings, cfg["model"]),
            data=DataSettings.from_dict(cfg["data"]),
            optim=_named("optim", OPTIMIZERS, cfg.get("optim"), "adamw"),
            sched=_named("sched", SCHEDULES, cfg.get("sched"), "cosine"),
            loss=_named("loss", LOSSES, cfg.get("loss"), "ce"),
            aug=build_section("aug", AugSettings, cfg.get("aug") or {}),
            trainer=build_section("trainer", TrainerSettings, cfg.get("trainer") or {}),
            resume=cfg.get("resume", False), logger=cfg.get("logger", "csv"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class EvaluateSettings:
    """tools/evaluate.py: a checkpoint scored on a labelled split (conf/evaluate.yaml)."""
    checkpoint: str | None = None  # the last.pt / best.pt to score
    data: Any = None              # DataSettings: which dataset (its split below, not train/val_split)
    split: str = "val"
    device: str = "auto"          # auto | cpu | cuda | cuda:<index>
    precision: str = "auto"       # as trainer.precision: auto | fp32 | tf32 | bf16 | fp16
    channels_last: Any = "auto"   # as trainer.channels_last
    batch_size: int = 20          # images (or patches) per pass, as trainer.val_batch_size
    num_workers: Any = "auto"     # as trainer.num_workers
    memory_limit_mb: Any = "auto"  # larger images are scored in tiles | auto: 90% of the free memory
    output: str | None = None     # the directory of metrics.json | null: the tool's run directory

    def __post_init__(self):
        if self.checkpoint in (None, "", "???"):
            raise SettingsError("checkpoint", "is not set; give the path of a last.pt or best.pt")
        if not isinstance(self.data, DataSettings):
            raise SettingsError("data", "is missing; choose a data group (data=<name>) with its root")
        check_device("device", self.device)
        check_precision("precision", self.precision)
        check_choice("channels_last", self.channels_last, ("auto", True, False))
        check_positive("batch_size", self.batch_size)
        if self.num_workers != AUTO and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise SettingsError("num_workers", f"must be auto or an integer >= 0, got {self.num_workers!r}")
        check_auto_or_positive("memory_limit_mb", self.memory_limit_mb, float)

    @classmethod
    def from_dict(cls, cfg: dict) -> "EvaluateSettings":
        """Plain dicts (the data group nested) -> settings; unknown keys are errors."""
        cfg = dict(cfg)
        data = cfg.pop("data", None)
        return build_section("", cls, dict(cfg, data=DataSettings.from_dict(data) if data else None))


def _named(group, table, values, default):
    values = dict(values or {"name": default})
    name = values.get("name", default)
    check_choice(f"{group}.name", name, tuple(table))
    out = build_section(group, table[name], values)
    if hasattr(out, "betas"):
        out.betas = tuple(out.betas)
    return out


def defaults_of(group: str, name: str | None = None) -> dict:
    """The default values of one group option, as its YAML file writes them."""
    table = {"optim": OPTIMIZERS, "sched": SCHEDULES, "loss": LOSSES}
    cls = TrainerSettings if group == "trainer" else table[group][name]
    out = dataclasses.asdict(cls())
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def resolve_output_stride(trainer: TrainerSettings, is_patch_classifier: bool,
                          valid_strides=None) -> int:
    """auto -> 2 for a patch classifier trained densely (exact on the (2m, 2n) grid, about
    3x cheaper on CPU) when its layers allow it, else 1. Already-dense networks have one
    output stride: their own (1 here, as they predict at full resolution)."""
    s = trainer.output_stride
    if not is_patch_classifier:
        if s not in ("auto", 1):
            raise SettingsError("trainer.output_stride", "applies to patch classifiers only; this "
                                "model is already dense, use trainer.output_stride=auto", ("auto", 1))
        return 1
    if trainer.method == "patch":  # any grid of sampled pixels; no dense pass to keep exact
        return 1 if s == "auto" else int(s)
    if s == "auto":
        return 2 if valid_strides is None or 2 in valid_strides else 1
    if valid_strides is not None and s not in valid_strides:
        raise SettingsError("trainer.output_stride", f"{s} is not exact for this network; the "
                            f"valid output strides are {valid_strides}", valid_strides)
    return int(s)
