"""The zoo's registry: each family module registers its builders here by name; `fcnseg.zoo`
imports every family and builds from the registry, so no family module imports the package."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn


@dataclass(frozen=True)
class Spec:
    build: Callable[[int, int, float], nn.Module]  # (num_classes, in_channels, width_mult)
    input_size: Callable[[], int]  # the architecture's own input size ("same" patch)
    published: Callable[[nn.Module], dict] | None  # downloads the published state dict


_REGISTRY: dict[str, Spec] = {}


def register(name: str, *, input_size: Callable[[], int], published=None):
    """Decorator registering `build(num_classes, in_channels, width_mult) -> nn.Module`."""

    def deco(build):
        if name in _REGISTRY:
            raise ValueError(f"fcnseg.zoo: the name {name!r} is registered twice")
        _REGISTRY[name] = Spec(build, input_size, published)
        return build

    return deco


def names() -> list[str]:
    return sorted(_REGISTRY)


def spec(name: str) -> Spec:
    if name not in _REGISTRY:
        raise KeyError(f"fcnseg.zoo has no network {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name]


def has_published_weights(name: str) -> bool:
    return spec(name).published is not None


def unregister(name: str) -> None:
    """Remove a name registered at run time (a user's own network, a test's); unknown names are ignored."""
    _REGISTRY.pop(name, None)
