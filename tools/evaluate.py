"""Score a checkpoint on a labelled split: the numbers of the training run's validation.

    python tools/evaluate.py checkpoint=outputs/run1/best.pt                 # the demo's val split
    python tools/evaluate.py checkpoint=PATH data=folder data.root=DIR data.num_classes=K split=test
    python tools/evaluate.py checkpoint=PATH data=patches data.root=DIR     # a patch classifier

Images with label masks give mIoU, per-class IoU and pixel accuracy; labelled patches
(data=patches) give accuracy and the confusion matrix. metrics.json goes to this command's
run directory (outputs/evaluate/<date>/<time>/, with evaluate.log), or to output=DIR.
Configuration: conf/evaluate.yaml.
"""
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import to_plain  # noqa: E402  the data root found as tools/train.py finds it

log = logging.getLogger("evaluate")


def main(cfg):
    from fcnseg.train.evaluate import evaluate_checkpoint
    from fcnseg.train.settings import EvaluateSettings
    try:
        settings = EvaluateSettings.from_dict(to_plain(cfg))
        out_dir = Path(settings.output) if settings.output else Path(HydraConfig.get().runtime.output_dir)
        if settings.output is None and (out_dir / "metrics.json").exists():
            raise ValueError(f"{out_dir / 'metrics.json'} exists (a training run's own report?); give "
                             f"output=DIR to write the scores elsewhere, or output={out_dir} to replace it")
        metrics = evaluate_checkpoint(settings, out_dir)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        log.error(f"error: {e}")
        sys.exit(1)
    return metrics.get("miou")


if __name__ == "__main__":
    hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")(main)()
