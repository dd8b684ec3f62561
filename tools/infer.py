"""Label every image of a folder (or a file, or a glob) with a trained checkpoint.

    python tools/infer.py checkpoint=best.pt input=photos/ output=labels/
    python tools/infer.py checkpoint=best.pt input='slides/**/*.tif' output=out tile_size=1024
    python tools/infer.py checkpoint=best.pt input=img.png output=out check=true region=[100,100,24,24]
    torchrun --nproc_per_node=4 tools/infer.py checkpoint=best.pt input=big/ output=out device=cuda
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 tools/infer.py ...

Configuration: conf/infer.yaml. Exit status 1 when any image failed (see
output/summary.csv), 2 for unusable arguments or settings. This file only turns the Hydra config
into fcnseg.infer.InferenceSettings; the library never imports Hydra.
"""
import sys

import hydra
from hydra.utils import to_absolute_path
from omegaconf import OmegaConf


def settings_from(cfg):
    from fcnseg.infer import InferenceSettings
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in ("checkpoint", "output"):
        if key in plain and plain[key] != "???":
            plain[key] = to_absolute_path(str(plain[key]))
    if "input" in plain:
        plain["input"] = str(plain["input"])  # may be a glob: resolved by the library
    return InferenceSettings.from_dict(plain)


@hydra.main(config_path="../conf", config_name="infer", version_base=None)
def main(cfg):
    from fcnseg.infer import run_inference
    from fcnseg.infer.paths import InputError
    try:
        result = run_inference(settings_from(cfg))
    except (InputError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if result.failed:
        print(f"{result.failed} image(s) failed; see the summary for each error", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
