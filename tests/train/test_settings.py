"""Training settings: the YAML agrees with the dataclass defaults, every documented
combination of config groups composes and resolves into runnable networks, and errors
name the setting (the CLI then speaks Hydra)."""
import itertools

import pytest
import yaml

from fcnseg.train import SettingsError, TrainSettings
from fcnseg.train.networks import build_networks
from fcnseg.train.settings import defaults_of, resolve_output_stride

from helpers import ROOT, load_tool

CONF = ROOT / "conf"


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,name", [("trainer", None)]
                         + [(g, n) for g in ("optim", "sched", "loss") for n in _options(g)])
def test_yaml_repeats_the_dataclass_defaults(group, name):
    path = CONF / group / f"{name or 'default'}.yaml"
    assert yaml.safe_load(path.read_text()) == defaults_of(group, name), path


def test_train_yaml_repeats_the_top_level_defaults():
    """The settings of conf/train.yaml outside the groups (resume, logger) are TrainSettings'."""
    import dataclasses
    top = {k: v for k, v in yaml.safe_load((CONF / "train.yaml").read_text()).items()
           if k not in ("defaults", "hydra")}
    fields = {f.name: f.default for f in dataclasses.fields(TrainSettings)
              if f.default is not dataclasses.MISSING}
    assert top == fields
    with pytest.raises(SettingsError) as info:
        TrainSettings.from_dict({"model": {"name": "patchnet"}, "data": {"root": "x"}, "logger": "wandb"})
    assert info.value.param == "logger"


def _compose(compose, tool, over):
    return tool.to_plain(compose("train", overrides=over))


def test_every_documented_group_combination_resolves():
    """Every model option with every training method is composed, validated and built
    into its networks; every option of each other group is composed and validated. The
    other groups' checks do not depend on the model or on each other (they are types and
    choices), so a full product would repeat the same checks (and take minutes of Hydra)."""
    from hydra import compose, initialize_config_dir
    tool = load_tool()
    tool.register_zoo_models()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for group in ("data", "optim", "sched", "loss", "aug"):
            for option in _options(group):
                over = [f"{group}={option}"]
                if group == "data" and option != "fashion_scenes":
                    over.append("data.root=/nonexistent/root")
                settings = TrainSettings.from_dict(_compose(compose, tool, over))
                assert getattr(settings, group) is not None
        for model, method in itertools.product(_options("model"), ("dense", "patch")):
            cfg = _compose(compose, tool, [f"model={model}", f"trainer.method={method}"])
            settings = TrainSettings.from_dict(cfg)
            if model.startswith("smp") and method == "patch":
                # the one refused pair: an already dense network has no patch to crop
                with pytest.raises(SettingsError) as info:
                    build_networks(settings, num_classes=11, in_channels=1)
                assert info.value.param == "trainer.method"
                continue
            got = build_networks(settings, num_classes=11, in_channels=1)
            if model.startswith("smp"):
                assert got.patch_size is None and got.stride == 1 and got.train_net is got.model
            elif method == "dense":
                assert got.stride == 2 and got.train_net is not got.eval_net  # exact stride-2 training
            else:
                assert got.stride == 1 and got.train_net is got.model


def test_output_stride_follows_the_model():
    t = TrainSettings.from_dict({"model": {"name": "patchnet"}, "data": {"root": "x"}}).trainer
    assert resolve_output_stride(t, is_patch_classifier=True) == 2
    assert resolve_output_stride(t, is_patch_classifier=False) == 1
    t.output_stride = 4
    assert resolve_output_stride(t, True) == 4
    with pytest.raises(SettingsError, match="trainer.output_stride.*already dense"):
        resolve_output_stride(t, False)


@pytest.mark.parametrize("cfg,param", [
    ({"trainer": {"epoch": 3}}, "trainer.epoch"),
    ({"trainer": {"method": "patches"}}, "trainer.method"),
    ({"trainer": {"sample_fraction": 0}}, "trainer.sample_fraction"),
    ({"optim": {"name": "adam"}}, "optim.name"),
    ({"sched": {"name": "cosine", "step_epochs": 3}}, "sched.step_epochs"),
    ({"data": {"root": None}}, "data.root"),
])
def test_errors_name_the_setting(cfg, param):
    base = {"model": {"name": "patchnet"}, "data": {"root": "x"}}
    for k, v in cfg.items():
        base[k] = dict(base.get(k, {}), **v)
    with pytest.raises(SettingsError) as info:
        TrainSettings.from_dict(base)
    assert info.value.param == param and str(info.value).startswith(param)


def test_cli_translates_library_errors_into_overrides():
    tool = load_tool()
    try:
        TrainSettings.from_dict({"model": {"name": "patchnet"}, "data": {"root": "x"},
                                 "optim": {"name": "adam"}})
    except SettingsError as e:
        text = tool.explain(e)
    assert "optim=adamw | optim=sgd" in text
    import fcnseg.train
    err = fcnseg.train.TrainingError("too big", fixes=["trainer.output_stride=4", "optim.name=sgd"],
                                     continue_in="outputs/run1")
    text = tool.explain(err)
    assert "trainer.output_stride=4  or  optim=sgd" in text
    assert "hydra.run.dir=outputs/run1 resume=true" in text
    # the library itself speaks its own settings, never Hydra's syntax
    lib = "\n".join(p.read_text() for p in (ROOT / "fcnseg").rglob("*.py"))
    assert "hydra.run.dir" not in lib and "optim=sgd" not in lib


@pytest.mark.parametrize("steps_per_epoch,epochs,steps,max_steps,total", [
    (125, None, "auto", None, 1125),   # the demo: nine epochs, the budget it was tuned with
    (2, None, "auto", None, 300),      # a dozen tiles: enough steps to learn
    (5000, None, "auto", None, 1200),  # a large dataset: bounded
    (2, 100, "auto", None, 200),       # epochs instead of steps
    (125, None, 40, None, 40),
    (125, None, "auto", 2, 2),         # the quick-check cap wins over everything
])
def test_step_budget(steps_per_epoch, epochs, steps, max_steps, total):
    from fcnseg.train.schedule import StepPlan
    from fcnseg.train.settings import TrainerSettings
    plan = StepPlan.from_settings(TrainerSettings(steps=steps, epochs=epochs, max_steps=max_steps),
                                  steps_per_epoch)
    assert plan.total_steps == total
    evals = [s for s in range(1, total + 1) if plan.evaluates_after(s)]
    assert evals[-1] == total and all(s % 250 == 0 for s in evals[:-1])


def test_device_workers_and_the_step_cap_speak_the_shared_vocabulary():
    base = {"model": {"name": "patchnet"}, "data": {"root": "x"}}
    t = TrainSettings.from_dict(dict(base, trainer={"device": "cuda:1", "num_workers": "auto"})).trainer
    assert t.device == "cuda:1" and t.num_workers == "auto"
    with pytest.raises(SettingsError, match="trainer.device: got 'cuda:x'"):
        TrainSettings.from_dict(dict(base, trainer={"device": "cuda:x"}))
    with pytest.raises(SettingsError, match="trainer.num_workers"):
        TrainSettings.from_dict(dict(base, trainer={"num_workers": -1}))
    # no training at all is an evaluation: the error says which command does it
    with pytest.raises(SettingsError, match="trainer.max_steps: 0 would train nothing.*tools/evaluate.py"):
        TrainSettings.from_dict(dict(base, trainer={"max_steps": 0}))
