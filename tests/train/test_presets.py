"""The public-dataset presets (conf/experiment/*.yaml): each composes with conf/train.yaml,
gives valid training settings with the published crops and schedules, builds its augmentation,
and leaves every choice overridable. No dataset is read."""
import numpy as np
import pytest

from fcnseg.data.augment import build_transform
from fcnseg.train.settings import TrainSettings

from helpers import ROOT, compose

# preset -> (data kind, crop, optimiser steps, batch size)
PRESETS = {"voc": ("voc", 512, 30000, 16), "cityscapes": ("cityscapes", 769, 80000, 8),
           "ade20k": ("ade20k", 512, 80000, 16)}


def test_every_preset_file_is_listed_here():
    assert {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")} == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_composes_into_valid_settings(name):
    kind, crop, steps, batch = PRESETS[name]
    s = TrainSettings.from_dict(compose([f"+experiment={name}", "data.root=/data/somewhere"]))
    assert (s.data.kind, s.data.root) == (kind, "/data/somewhere")
    assert (s.trainer.steps, s.trainer.batch_size, s.trainer.val_batch_size) == (steps, batch, 1)
    assert steps % s.trainer.eval_every == 0
    assert (s.optim.name, s.optim.lr, s.sched.name, s.sched.power) == ("sgd", 0.01, "poly", 0.9)
    assert s.loss.name == "ce" and s.loss.class_weights is None
    assert (s.model.builder, s.model.name) == ("smp", "DeepLabV3Plus")
    crops = [t for t in s.aug.transforms if t["name"] == "RandomCrop"]
    assert [(t["height"], t["width"]) for t in crops] == [(crop, crop)]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_augmentation_gives_crops_padded_with_ignore(name):
    crop = PRESETS[name][1]
    s = TrainSettings.from_dict(compose([f"+experiment={name}", "data.root=/x"]))
    transform = build_transform({"transforms": s.aug.transforms})
    transform.set_random_seed(0)
    image = np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)  # < crop at scale 2
    out = transform(image=image, mask=np.zeros((100, 120), np.uint8))
    assert out["image"].shape == (crop, crop, 3) and out["mask"].shape == (crop, crop)
    assert set(np.unique(out["mask"])) == {0, 255}  # the padding is ignored, not learnt as class 0


def test_preset_choices_stay_overridable():
    s = TrainSettings.from_dict(compose(["+experiment=voc", "data.root=/x", "model=patchnet",
                                         "trainer.steps=40000", "trainer.batch_size=8"]))
    assert (s.model.builder, s.model.name, s.model.kwargs.get("encoder_name")) == ("zoo", "patchnet", None)
    assert (s.trainer.steps, s.trainer.batch_size, s.data.kind) == (40000, 8, "voc")


def test_auto_steps_warn_when_the_cap_cuts_a_large_dataset_short(caplog):
    from fcnseg.train.schedule import StepPlan
    from fcnseg.train.settings import TrainerSettings

    with caplog.at_level("WARNING", logger="fcnseg.train.schedule"):
        assert StepPlan.from_settings(TrainerSettings(), 125).total_steps == 1125  # the demo: nine passes
        assert not caplog.records
        assert StepPlan.from_settings(TrainerSettings(), 2500).total_steps == 1200
    assert "0.48 passes" in caplog.text and "trainer.steps=N" in caplog.text
