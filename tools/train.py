"""Train a pixelwise classifier.

    python tools/train.py                                   # demo: patchnet on data/fashion_scenes
    python tools/train.py model=smp_unet trainer.steps=3000
    python tools/train.py data=folder data.root=PATH data.num_classes=K trainer.device=cuda
    python tools/train.py hydra.run.dir=outputs/run1 resume=true    # continue run1
    python tools/train.py -m model=patchnet,smp_unet                 # sweep
    torchrun --nproc_per_node=4 tools/train.py trainer.device=cuda   # DDP

Configuration lives in conf/ (train.yaml and its groups). This file only turns the
Hydra config into plain dicts for fcnseg.train.run; the library never imports Hydra.
Every message goes through logging: the console and the run directory's train.log.
"""
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
log = logging.getLogger("train")


def register_zoo_models():
    """Every fcnseg.zoo name is a choice of the model group (model=<name>), generated
    from the zoo's registry; names with a file in conf/model/ keep that file."""
    import fcnseg.zoo
    import fcnseg.zoo.patchnets  # noqa: F401  registers the custom patch nets
    have = {p.stem for p in (CONF / "model").glob("*.yaml")}
    cs = ConfigStore.instance()
    for name in fcnseg.zoo.names():
        if name not in have:
            cs.store(group="model", name=name, node={
                "builder": "zoo", "name": name,
                "kwargs": {"width_mult": 1.0, "padding": "valid", "pretrained": False},
                "pad_mode": "constant", "pad_value": 0.0})


def to_plain(cfg):
    """Hydra config -> plain dicts, with a relative data root found from the working
    directory first, then from the project root (so the demo runs from anywhere)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    root = plain["data"].get("root")
    if root and not Path(root).is_absolute() and not Path(root).exists() and (ROOT / root).exists():
        plain["data"]["root"] = str(ROOT / root)
    return plain


# settings whose value is a config group: the fix is the group choice, not a key
GROUPS = {"optim.name": "optim", "sched.name": "sched", "loss.name": "loss"}


def as_overrides(fixes):
    """The library's settings assignments ("optim.name=sgd") as Hydra overrides (optim=sgd)."""
    out = []
    for fix in fixes:
        key, _, value = fix.partition("=")
        out.append(f"{GROUPS[key]}={value}" if key in GROUPS else fix)
    return out


def explain(error):
    """A library error, with its fixes and the resume command in this tool's syntax."""
    import fcnseg.train
    lines = [f"error: {error}"]
    if isinstance(error, fcnseg.train.SettingsError):
        if error.param in GROUPS and error.choices:
            lines.append("choose: " + " | ".join(f"{GROUPS[error.param]}={c}" for c in error.choices))
        elif error.choices:
            lines.append("choose: " + " | ".join(f"{error.param}={c}" for c in error.choices))
    fixes = getattr(error, "fixes", None)
    if fixes:
        lines.append("try: " + "  or  ".join(as_overrides(fixes)))
    if getattr(error, "continue_in", None):
        lines.append(f"continue a run with: python tools/train.py hydra.run.dir={error.continue_in} "
                     f"resume=true   (or resume=<path to last.pt>)")
    return "\n".join(lines)


def main(cfg):
    import fcnseg.train
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        metrics = fcnseg.train.run(to_plain(cfg), run_dir, exit_on_signal=True)
    except (fcnseg.train.TrainingError, ValueError, FileNotFoundError) as e:
        log.error(explain(e))
        sys.exit(1)
    if metrics.get("interrupted"):
        log.warning(f"continue with: python tools/train.py hydra.run.dir={metrics['run_dir']} resume=true "
                    f"(and the same overrides)")
        sys.exit(128 + metrics["signal"])  # the shell's convention: 130 SIGINT, 143 SIGTERM
    return metrics["miou"]  # the value a sweeper optimises


if __name__ == "__main__":
    register_zoo_models()
    hydra.main(version_base="1.3", config_path="../conf", config_name="train")(main)()
