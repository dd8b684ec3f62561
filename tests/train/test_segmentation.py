"""The real conf/train.yaml, composed with Hydra, shrunk, run on CPU."""
import json
import signal

import pytest
import torch

import fcnseg
import fcnseg.train
import fcnseg.zoo
from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
from fcnseg.data import DatasetError, build_dataset
from fcnseg.train.evaluate import evaluate
from fcnseg.train.loaders import collate_images
from fcnseg.train.segmentation import SegmentationTask

from helpers import compose, make_scenes, tiny_overrides

CKPT_KEYS = {"model", "state_dict", "patch_size", "pad_mode", "pad_value", "in_channels",
             "num_classes", "class_names", "palette", "mean", "std", "ignore_index",
             "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "method",
             "output_stride", "total_steps"}


@pytest.fixture(scope="module")
def dense_run(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("dense_run")
    # 6 training images, batch 3: 2 steps per epoch; 5 steps, validation every 2 and at the end
    cfg = compose(tiny_overrides(scenes, "trainer.epochs=null", "trainer.steps=5",
                                 "trainer.eval_every=2", "model.pad_mode=replicate"))
    return out, fcnseg.train.run(cfg, out)


def test_run_writes_metrics_reports_and_checkpoints(dense_run):
    out, metrics = dense_run
    for f in ("metrics.json", "metrics.csv", "curves.png", "val_grid.png", "last.pt", "best.pt"):
        assert (out / f).stat().st_size > 0, f
    js = json.loads((out / "metrics.json").read_text())
    assert len(js["per_class_iou"]) == 3 and js["method"] == "dense"
    assert js["output_stride"] == 2 and js["steps"] == 5  # the patch classifier's auto stride
    assert js["miou"] == pytest.approx(metrics["miou"]) and 0 <= js["pixel_acc"] <= 1
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,epoch,train_loss,val_miou")
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4", "5"]  # every 2 steps and the end
    raw = torch.load(out / "last.pt", weights_only=True)  # no pickled code in checkpoints
    assert CKPT_KEYS <= set(raw) and raw["step"] == 5 and raw["epoch"] == 2
    side = fcnseg.zoo.spec("patchnet").input_size()  # the default model's computed patch
    assert raw["patch_size"] == [side, side] and raw["pad_mode"] == "replicate"
    assert raw["class_names"] == ["background", "square", "disc"] and raw["in_channels"] == 1
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_checkpoint_alone_rebuilds_the_evaluated_model(dense_run, scenes):
    out, _ = dense_run
    ck = load_checkpoint(out / "last.pt")
    model, info = model_from_checkpoint(ck)
    dense = fcnseg.densify(model, info["patch_size"], pad_mode=info["pad_mode"],
                           pad_value=info["pad_value"])
    ds = build_dataset("folder", scenes, "val")
    loader = torch.utils.data.DataLoader(ds, 2, collate_fn=collate_images)
    again = evaluate(dense, loader, info["num_classes"], info["ignore_index"]).compute()
    assert again["miou"] == pytest.approx(ck["metrics"]["miou"], abs=1e-12)
    assert again["per_class_iou"] == pytest.approx(ck["metrics"]["per_class_iou"], nan_ok=True)


def test_patch_method_in_micro_batches_and_smp_at_native_resolution(scenes, tmp_path):
    m = fcnseg.train.run(compose(tiny_overrides(
        scenes, "trainer.method=patch", "trainer.sample_fraction=0.05", "trainer.patch_memory_mb=1",
        "optim=sgd", "sched=poly", "loss=focal", "trainer.max_steps=1")), tmp_path / "p")
    js = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert js["method"] == "patch" and js["output_stride"] == 1 and 0 <= m["miou"] <= 1
    # no stride override needed for an already dense network
    m = fcnseg.train.run(compose(tiny_overrides(
        scenes, "model=smp_unet", "+model.kwargs.encoder_depth=3",
        "+model.kwargs.decoder_channels=[16,8,4]", "trainer.max_steps=1", zoo=False)),
        tmp_path / "u")
    ck = load_checkpoint(tmp_path / "u" / "best.pt")
    assert ck["patch_size"] is None and ck["model"]["builder"] == "smp" and ck["output_stride"] == 1
    model, info = model_from_checkpoint(ck)
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 3, 32, 32)


def _interrupt_at(monkeypatch, call):
    """Deliver SIGTERM to this process during the call-th training step."""
    real, n = SegmentationTask.step, [0]

    def wrapped(self, *a, **k):
        n[0] += 1
        if n[0] == call:
            signal.raise_signal(signal.SIGTERM)
        return real(self, *a, **k)
    monkeypatch.setattr(SegmentationTask, "step", wrapped)


def test_sigterm_checkpoints_and_resume_ends_with_the_same_weights(scenes, tmp_path, monkeypatch):
    over = tiny_overrides(scenes, "trainer.epochs=2", "trainer.deterministic=true",
                          "trainer.batch_size=2", "trainer.grid_images=0", "trainer.eval_every=2")
    whole = fcnseg.train.run(compose(over), tmp_path / "whole")
    _interrupt_at(monkeypatch, 4)  # step 4 of 6 (3 steps per epoch): mid-epoch 2
    r = fcnseg.train.run(compose(over), tmp_path / "cut")
    assert r["interrupted"] and r["step"] == 4 and r["signal"] == signal.SIGTERM
    ck = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (ck["epoch"], ck["step"]) == (1, 4)
    monkeypatch.undo()
    resumed = fcnseg.train.run(compose(over + ["resume=true"]), tmp_path / "cut")
    a = load_checkpoint(tmp_path / "whole" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "last.pt")
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert resumed["miou"] == whole["miou"]
    assert [h["step"] for h in a["history"]] == [h["step"] for h in b["history"]] == [2, 4, 6]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(scenes, tmp_path, monkeypatch):
    import fcnseg.train.segmentation as segmentation
    real, n = segmentation.dense_logits, [0]

    def nan_after_2(*a, **k):
        n[0] += 1
        out = real(*a, **k)
        return out * float("nan") if n[0] > 2 else out
    monkeypatch.setattr(segmentation, "dense_logits", nan_after_2)
    with pytest.raises(fcnseg.train.TrainingError, match="loss became nan.*last good checkpoint") as e:
        fcnseg.train.run(compose(tiny_overrides(scenes, "trainer.epochs=2",
                                                "trainer.eval_every=2")), tmp_path)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert any(f.startswith("optim.lr=") for f in e.value.fixes)


def test_bad_data_fails_before_training_naming_the_file(tmp_path):
    root = make_scenes(tmp_path / "bad", n_train=2, n_val=1)
    (root / "train" / "masks" / "s01.png").unlink()
    with pytest.raises(DatasetError, match="s01"):
        fcnseg.train.run(compose(tiny_overrides(root)), tmp_path / "run")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_validation_within_the_memory_limit_is_tiled_to_the_untiled_numbers(scenes, tmp_path, caplog):
    """A limit that one training step of the patch method fits in (one patch per micro-batch)
    but one 32x32 validation image at stride 1 does not: the run validates in tiles, and its
    scores equal an untiled evaluation of its checkpoint."""
    import logging

    from fcnseg.train.evaluate import evaluate_checkpoint
    from fcnseg.train.settings import DataSettings, EvaluateSettings
    over = ["data=folder", f"data.root={scenes}", "model.kwargs.width_mult=0.5", "trainer.device=cpu",
            "trainer.max_steps=2", "trainer.batch_size=3", "trainer.val_batch_size=2", "trainer.grid_images=1",
            "trainer.method=patch", "trainer.sample_fraction=0.01", "trainer.patch_memory_mb=0.1",
            "trainer.memory_limit_mb=2.5", "optim.lr=0.00001", "loss.class_weights=null"]
    with caplog.at_level(logging.INFO, logger="fcnseg.train"):
        final = fcnseg.train.run(compose(over), tmp_path / "run")
    assert "validation: each image alone, in tiles of up to" in caplog.text
    assert sum(v > 0 for v in final["per_class_iou"]) >= 2  # more than one class predicted
    untiled = evaluate_checkpoint(EvaluateSettings(
        checkpoint=str(tmp_path / "run" / "last.pt"), batch_size=2,
        data=DataSettings(kind="folder", root=str(scenes), options={"num_classes": 3})), tmp_path)
    assert [untiled[k] for k in ("miou", "pixel_acc")] == [final[k] for k in ("miou", "pixel_acc")]
    assert untiled["per_class_iou"] == pytest.approx(final["per_class_iou"], abs=0, nan_ok=True)


def _scan_worker(rank, world, port, root, out):
    import os

    import torch.distributed as dist

    from fcnseg.data import FolderDataset
    from fcnseg.runtime import DistEnv
    from fcnseg.train.segmentation import build_datasets
    from fcnseg.train.settings import AugSettings, DataSettings
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    decoded = []
    load = FolderDataset.load
    FolderDataset.load = lambda self, i: decoded.append(i) or load(self, i)
    _, _, counts = build_datasets(DataSettings.from_dict({"kind": "folder", "root": root}), AugSettings(),
                                  DistEnv(rank, world, rank))
    torch.save({"decoded": len(decoded), "counts": torch.as_tensor(counts)}, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow  # two fresh interpreters: ~10-30 s on 2 shared cores
def test_ranks_scan_the_data_once(tmp_path):
    """Rank 0 decodes every sample and writes the scan cache; rank 1 waits and decodes none."""
    import socket

    import torch.multiprocessing as mp
    root = make_scenes(tmp_path / "s", n_train=3, n_val=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_scan_worker, args=(2, port, str(root), str(tmp_path / "scan")), nprocs=2)
    first, second = (torch.load(tmp_path / f"scan.{r}", weights_only=True) for r in (0, 1))
    assert first["decoded"] == 5 and second["decoded"] == 0
    assert torch.equal(first["counts"], second["counts"])
