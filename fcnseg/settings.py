"""The one settings style every front end shares (train, infer, verify, export, bench).

Each front end declares its settings as dataclasses whose defaults are the only defaults;
`build_section` turns the plain dict a config system produces into one, refusing unknown
keys, and the checks below refuse impossible values with a `SettingsError` that names the
setting by its dotted path (`trainer.batch_size`) and, where there is a fixed set, the
values it accepts. Every front end's YAML under conf/ repeats its defaults so `--help`
shows them, and a test holds each YAML to its dataclass.

One vocabulary for what the machine decides: ``auto`` means "the project's documented rule
for this machine" wherever a setting takes it (device, precision, channels_last,
num_workers, steps, output_stride, tile sizes); explicit values name one choice.
"""
from __future__ import annotations

import dataclasses
from typing import Any

AUTO = "auto"
PRECISIONS = (AUTO, "fp32", "tf32", "bf16", "fp16")


class SettingsError(ValueError):
    """A setting that cannot be used. `param` is its dotted path (`trainer.batch_size`);
    `choices`, when given, are the values it accepts."""

    def __init__(self, param: str, message: str, choices=None):
        self.param, self.choices = param, tuple(choices) if choices else None
        super().__init__(f"{param}: {message}")


def check_choice(param: str, value: Any, choices) -> None:
    if value not in choices:
        raise SettingsError(param, f"got {value!r}; choose one of {', '.join(map(str, choices))}",
                            choices)


def check_positive(param: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SettingsError(param, f"must be a positive integer, got {value!r}")


def check_auto_or_positive(param: str, value: Any, kind: type = int) -> None:
    if value == AUTO:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or \
            (kind is int and not isinstance(value, int)):
        raise SettingsError(param, f"must be '{AUTO}' or a positive {kind.__name__}, got {value!r}")


def check_device(param: str, value: Any) -> None:
    """auto | cpu | cuda | cuda:<index>: the syntax only; whether the device exists is
    decided when the run picks it (fcnseg.runtime.pick_device)."""
    value = str(value)
    if value in (AUTO, "cpu", "cuda"):
        return
    if value.startswith("cuda:") and value[len("cuda:"):].isdigit():
        return
    raise SettingsError(param, f"got {value!r}; choose auto, cpu, cuda or cuda:<index> (e.g. cuda:1)",
                        (AUTO, "cpu", "cuda", "cuda:<index>"))


def check_precision(param: str, value: Any) -> None:
    check_choice(param, value, PRECISIONS)


def build_section(section: str, cls: type, values: dict | None):
    """``cls(**values)`` for the settings section named ``section``, refusing keys the
    dataclass does not declare (a typo would otherwise be ignored silently)."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in names:
            raise SettingsError(f"{section}.{k}" if section else k,
                                f"unknown setting; {section or 'the command'} takes "
                                f"{', '.join(sorted(names))}")
    return cls(**values)


def defaults(cls: type) -> dict:
    """A settings dataclass's defaults as its YAML file writes them (tuples as lists)."""
    out = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
           for f in dataclasses.fields(cls)
           if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
