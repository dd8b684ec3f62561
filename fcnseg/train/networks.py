"""The networks a run trains and evaluates, built from the model settings.

Images with label masks (`build_networks`): the model, the dense net at the output stride
that trains it, and the dense net at stride 1 that evaluates it, all on the model's own
parameters. Labelled patches (`patch_classifier`): the classifier built for the data's
patch size, checked to convert before any step runs.
"""
from __future__ import annotations

import dataclasses
import inspect

import torch

from fcnseg.checkpoint import build_model, model_spec
from fcnseg.dense import densify, freeze_batchnorm
from fcnseg.settings import SettingsError
from fcnseg.train.errors import TrainingError
from fcnseg.train.settings import TrainSettings, resolve_output_stride


@dataclasses.dataclass
class Networks:
    spec: dict                  # the recipe stored in checkpoints
    model: torch.nn.Module      # the classifier: the parameters every net below shares
    patch_size: tuple | None
    train_net: torch.nn.Module  # dense at the output stride | the classifier (patch method)
    eval_net: torch.nn.Module   # dense at stride 1
    stride: int
    has_bn: bool
    channels_last: bool


def padding_of(model_settings) -> dict:
    """The padding keywords of fcnseg.densify from the model settings."""
    return {"pad_mode": model_settings.pad_mode, "pad_value": model_settings.pad_value}


def channels_last_of(trainer_settings) -> bool:
    """auto = on: NHWC is faster for the dilated pools and convs on GPU and also on CPU."""
    return True if trainer_settings.channels_last == "auto" else bool(trainer_settings.channels_last)


def build_networks(settings: TrainSettings, num_classes, in_channels, device="cpu") -> Networks:
    """The model and the nets a run trains and evaluates, with the settings that follow
    the model resolved: an already dense network (smp) trains at its native resolution,
    a patch classifier densely at output stride 2 (auto) or as it is told. Raises
    SettingsError for a combination that cannot run; reads no data (so it is also the
    check of a configuration)."""
    trainer = settings.trainer
    spec = model_spec(dataclasses.asdict(settings.model), num_classes, in_channels)
    model = build_model(spec).to(device)
    ps = getattr(model, "patch_size", None)
    patch_size = tuple(ps) if ps is not None else None
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and patch_size is not None:
        # batch statistics mix the positions of a whole image, which one patch cannot
        # see: patch classifiers train with running statistics (densify requires it)
        freeze_batchnorm(model)
    pad = padding_of(settings.model)
    if patch_size is None and trainer.method == "patch":
        raise SettingsError("trainer.method", f"model {settings.model.name} is already a dense network "
                            f"(no patch size); train it with method dense", ("dense",))
    stride = resolve_output_stride(trainer, patch_size is not None)
    channels_last = channels_last_of(trainer)
    if patch_size is None:
        train_net = eval_net = model
    else:
        # one dense net for evaluation (stride 1, every pixel) and, for dense training,
        # one at the output stride; both run on the classifier's own parameters
        eval_net = densify(model, patch_size, **pad)
        train_net = model
        if trainer.method == "dense":
            from fcnseg.convert.errors import OutputStrideError
            try:
                train_net = densify(model, patch_size, output_stride=stride, **pad)
            except OutputStrideError as e:
                if trainer.output_stride != "auto":
                    raise SettingsError("trainer.output_stride", str(e)) from None
                stride, train_net = 1, eval_net  # auto, and this net cannot skip rows
    if channels_last and train_net is model:
        model.to(memory_format=torch.channels_last)
    return Networks(spec, model, patch_size, train_net, eval_net, stride, has_bn, channels_last)


def patch_classifier(model_settings, patch_size, num_classes, in_channels):
    """(recipe, classifier) for labelled patches of `patch_size`: a zoo builder with a
    patch_size keyword is built for the data's patch; any other model must already take
    it, else a TrainingError names the sizes and the fix."""
    kwargs = dict(model_settings.kwargs or {})
    if model_settings.builder == "zoo" and kwargs.get("patch_size") is None:
        import fcnseg.zoo
        build = fcnseg.zoo.spec(model_settings.name).build
        if "patch_size" in inspect.signature(build).parameters:
            P, Q = patch_size
            kwargs["patch_size"] = P if P == Q else [P, Q]
    spec = model_spec({"builder": model_settings.builder, "name": model_settings.name, "kwargs": kwargs},
                      num_classes, in_channels)
    try:
        model = build_model(spec)
    except ValueError as e:  # e.g. a builder that cannot reach the data's patch size
        raise TrainingError(f"model {spec['name']} for the {patch_size[1]}x{patch_size[0]} patches of the "
                            f"data: {e}") from e
    got = getattr(model, "patch_size", None)
    if got is None:
        raise TrainingError(f"model {spec['name']} is a dense network (no patch size); labelled patches "
                            f"train a patch classifier: use model=patchnet or another zoo network")
    if tuple(got) != tuple(patch_size):
        P, Q = patch_size
        if "patch_size" in spec["kwargs"]:
            fix = (f"set model.kwargs.patch_size to {P if P == Q else [P, Q]} or null (the data's size), or "
                   f"cut the patches at {got[1]}x{got[0]}")
            fixes = ["model.kwargs.patch_size=null"]
        else:
            fix = (f"cut the patches at {got[1]}x{got[0]}, the size this model fits, or train a model built "
                   f"for {Q}x{P}: model=patchnet computes its layers for the data's patch")
            fixes = ["model=patchnet"]
        raise TrainingError(
            f"model {spec['name']} classifies {got[1]}x{got[0]} patches (computed from its layers) but the "
            f"data's patches are {Q}x{P} (WxH); patches are never resized. Fix: {fix}", fixes=fixes)
    return spec, model
