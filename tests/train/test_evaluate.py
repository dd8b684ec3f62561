"""Validation (fcnseg.train.evaluate): a checkpoint scored later gives the numbers of the
run's own validation, whole or in tiles under a small memory budget; two gloo processes
evaluating shards give, after the all_reduce, the confusion matrix of one process."""
import json
import logging
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

import fcnseg
import fcnseg.zoo
import fcnseg.zoo.patchnets  # noqa: F401
from fcnseg.data import build_dataset
from fcnseg.runtime import ShardSampler
from fcnseg.settings import SettingsError, defaults
from fcnseg.train.evaluate import evaluate, evaluate_checkpoint, plan_validation
from fcnseg.train.loaders import collate_images
from fcnseg.train.settings import DataSettings, EvaluateSettings

from helpers import ROOT, compose, make_scenes


@pytest.fixture(scope="module")
def run(scenes, tmp_path_factory):
    """A tiny run, 4 steps, validation every 2 and at the end; at this width, rate and seed
    its predictions are not one class everywhere (else equal scores would prove little)."""
    out = tmp_path_factory.mktemp("evaluated_run")
    fcnseg.train.run(compose(["data=folder", f"data.root={scenes}", "model.kwargs.width_mult=0.5",
                              "trainer.device=cpu", "trainer.epochs=null", "trainer.steps=4",
                              "trainer.eval_every=2", "trainer.batch_size=3", "trainer.val_batch_size=2",
                              "trainer.grid_images=0", "optim.lr=0.00001", "loss.class_weights=null"]), out)
    return out


def _score(run_dir, scenes, out, name="last.pt", **kw):
    settings = EvaluateSettings(checkpoint=str(run_dir / name), batch_size=2,
                                data=DataSettings(kind="folder", root=str(scenes),
                                                  options={"num_classes": 3}), **kw)
    return evaluate_checkpoint(settings, out), json.loads((out / "metrics.json").read_text())


def test_a_checkpoint_scores_as_the_run_validated_it(run, scenes, tmp_path):
    final = json.loads((run / "metrics.json").read_text())
    assert sum(v > 0 for v in final["per_class_iou"]) >= 2  # more than one class predicted
    metrics, written = _score(run, scenes, tmp_path / "last")
    for key in ("miou", "pixel_acc", "per_class_iou"):
        assert written[key] == final[key], key  # exactly: the same code on the same weights
    assert written["split"] == "val" and written["step"] == 4 and written["class_names"] == final["class_names"]
    best = torch.load(run / "best.pt", weights_only=True)
    _, again = _score(run, scenes, tmp_path / "best", "best.pt")
    assert again["miou"] == best["metrics"]["miou"] == final["best_miou"]
    assert again["per_class_iou"] == [None if v != v else v for v in best["metrics"]["per_class_iou"]]


def test_images_above_the_memory_budget_are_scored_in_tiles_to_the_same_numbers(run, scenes, tmp_path, caplog):
    # 2.5 MiB: one 32x32 validation image at stride 1 does not fit in one pass of this net
    ck = torch.load(run / "last.pt", weights_only=True)
    model, info = fcnseg.checkpoint.model_from_checkpoint(ck)
    net = fcnseg.densify(model, info["patch_size"], pad_mode=info["pad_mode"])
    plan = plan_validation(net, 1, 2, 2.5 * 2**20)
    assert plan.whole_side < 32 and plan.tile_side < 32  # several tiles per image
    with caplog.at_level(logging.INFO, logger="fcnseg.train"):
        metrics, written = _score(run, scenes, tmp_path, memory_limit_mb=2.5)
    assert "in tiles of up to" in caplog.text
    final = json.loads((run / "metrics.json").read_text())
    assert [written[k] for k in ("miou", "pixel_acc", "per_class_iou")] == \
        [final[k] for k in ("miou", "pixel_acc", "per_class_iou")]


def test_a_budget_below_one_output_cell_is_refused(run, scenes, tmp_path):
    with pytest.raises(fcnseg.train.TrainingError, match="validation cannot fit.*memory limit"):
        _score(run, scenes, tmp_path, memory_limit_mb=0.1)


def test_the_config_file_holds_the_settings_defaults():
    conf = yaml.safe_load((ROOT / "conf" / "evaluate.yaml").read_text())
    want = {k: v for k, v in defaults(EvaluateSettings).items() if k not in ("checkpoint", "data")}
    got = {k: v for k, v in conf.items() if k not in ("defaults", "hydra", "checkpoint")}
    assert got == want and conf["checkpoint"] == "???"
    with pytest.raises(SettingsError, match="checkpoint: is not set"):
        EvaluateSettings.from_dict({"checkpoint": "???", "data": {"kind": "folder", "root": "x"}})
    with pytest.raises(SettingsError, match="device: got 'gpu'"):
        EvaluateSettings.from_dict({"checkpoint": "a.pt", "data": {"root": "x"}, "device": "gpu"})


def _net():
    torch.manual_seed(3)
    m = fcnseg.zoo.create("patchnet", 3, in_channels=1, width_mult=0.25).eval()
    return fcnseg.densify(m, pad_mode="replicate")


def _worker(rank, world, port, root, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ds = build_dataset("folder", root, "val")
    loader = torch.utils.data.DataLoader(ds, 2, sampler=ShardSampler(len(ds), rank, world),
                                         collate_fn=collate_images)
    cm = evaluate(_net(), loader, 3)
    if rank == 0:
        torch.save(cm.mat, out)
    dist.destroy_process_group()


@pytest.mark.slow  # two fresh interpreters: ~10-30 s on 2 shared cores
def test_two_process_metrics_equal_single_process(tmp_path):
    root = make_scenes(tmp_path / "s", n_train=1, n_val=5)  # odd: shards of 3 and 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(root), str(tmp_path / "cm.pt")), nprocs=2)
    ds = build_dataset("folder", root, "val")
    single = evaluate(_net(), torch.utils.data.DataLoader(ds, 2, collate_fn=collate_images), 3)
    both = torch.load(tmp_path / "cm.pt", weights_only=True)
    assert both.sum() == single.mat.sum() == 5 * 31 * 32  # each pixel once (row 0 ignored)
    assert torch.equal(both, single.mat)
