"""Loading published or local weights into a zoo network, strictly.

Every tensor must match by name and shape, with two exceptions:
- when the file's classifier has another number of classes than the network (ImageNet's
  1000 vs your K), the network's last layer keeps its fresh initialisation;
- when the network's first convolution takes another number of input channels than the
  file's (a gray or multi-band model from RGB weights), its weight is adapted as timm and
  segmentation_models_pytorch do (`adapt_input_channels`), and the log says so.
Anything else that differs is an error that lists the keys. Local files are never
unpickled: torch.load(weights_only=True) or safetensors.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Mapping

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a torch file (weights_only, no pickled code).

    Accepts a plain state dict, a checkpoint holding one under "state_dict" or "model", and
    the "module." prefix that DataParallel/DDP add.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path, device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the last Linear/Conv2d: the layer that produces the class scores."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            last = name
    return {f"{last}.{p}" for p, _ in model.get_submodule(last).named_parameters(recurse=False)}


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first convolution's weight `(O, I, kh, kw)`, trained on I input channels (RGB: 3),
    for `in_channels` channels, as timm's `adapt_input_conv` computes it:

    - 1 channel: the sum over the I channels, so that a gray image gives exactly what the
      original network gives on that image replicated into I channels;
    - more: the I channels repeated cyclically (R, G, B, R, G, ...) and scaled by
      I / in_channels, so that inputs of similar statistics keep their activation scale.
    """
    trained = weight.shape[1]
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(in_channels, device=weight.device) % trained
    return weight[:, index] * (trained / in_channels)


def first_conv_key(model: nn.Module) -> str | None:
    """State-dict key of the weight of the first Conv2d (the layer that reads the image)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return f"{name}.weight" if m.groups == 1 else None
    return None


def _adapt_first_conv(model, own, state, source):
    """`state` with the first convolution adapted to the network's input channels, when only
    those differ; otherwise `state` unchanged (the mismatch is reported by the caller)."""
    key = first_conv_key(model)
    if key is None or key not in state or key not in own:
        return state
    file, net = state[key].shape, own[key].shape
    if len(file) != 4 or file == net or file[:1] + file[2:] != net[:1] + net[2:]:
        return state
    how = "summed over its channels" if net[1] == 1 else f"repeated cyclically and scaled by {file[1]}/{net[1]}"
    logger.info("%s: the first convolution %s was trained on %d input channels; the network takes %d, "
                "so its weight is %s", source, key, file[1], net[1], how)
    return dict(state, **{key: adapt_input_channels(state[key], net[1])})


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> list[str]:
    """Load `state` into `model`; returns the keys left at their initialisation (the head).
    A first convolution trained on other input channels is adapted (`adapt_input_channels`)."""
    own = model.state_dict()
    state = _adapt_first_conv(model, own, state, source)
    head = classifier_keys(model)
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    mismatched = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    reinit = []
    if mismatched and set(mismatched) >= head and set(head) & set(mismatched):
        # The classifier differs: only its output size may (num_classes), its input may not.
        if all(own[k].shape[1:] == state[k].shape[1:] for k in head):
            reinit = sorted(head)
            mismatched = [k for k in mismatched if k not in head]
    if missing or unexpected or mismatched:
        lines = [f"cannot load {source} into {type(model).__name__}:"]
        lines += [f"  shape mismatch {k}: file {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
                  for k in mismatched]
        lines += [f"  missing from the file: {k}" for k in missing]
        lines += [f"  not in the network: {k}" for k in unexpected]
        lines.append("Build the network with the width_mult the weights were saved with; only the "
                     "classifier's number of classes and the first convolution's input channels may differ.")
        raise ValueError("\n".join(lines))
    model.load_state_dict({k: v for k, v in state.items() if k not in reinit}, strict=False)
    return reinit


def load_pretrained(model: nn.Module, name: str, published: Callable[[nn.Module], dict] | None, pretrained,
                    width_mult: float = 1.0) -> list[str]:
    if pretrained is True:
        if published is None:
            from .registry import has_published_weights, names

            have = [n for n in names() if has_published_weights(n)]
            raise ValueError(f"fcnseg.zoo: {name!r} has no published weights; pass pretrained=<path to a "
                             f"state dict>, or use one of: {', '.join(have)}")
        if width_mult != 1.0:
            raise ValueError(f"the published {name} weights exist at width_mult=1.0 only, got {width_mult}")
        return load_state(model, published(model), f"the published {name} weights")
    if isinstance(pretrained, (str, os.PathLike)):
        return load_state(model, read_state_dict(pretrained), os.fspath(pretrained))
    raise TypeError(f"pretrained must be False, True or a path, got {pretrained!r}")
