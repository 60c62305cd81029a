"""The model registry and ``build``: every model family registers a spec here, and ``build`` makes one by name.

A spec names a module class, the configuration dataclass it is built from, one preset of that configuration per
size, and the interface the model offers to the objectives:

- ``"log_density"``: ``model.log_density(x)``, (B, *event) -> (B,), possibly unnormalized (an EBM has
  log p = -E); ``model(x)`` returns the same.
- ``"score"``: ``model.score(x, ...)``, (B, *event) -> (B, *event), an estimate of grad_x log p.
- ``"sampler"``: neither; a network that is trained through another one (the implicit encoders and decoders).

Sizes: ``"paper"`` is the published configuration (paper section 6, appendix C.2, and the released code);
``"cpu"`` is the same architecture, narrower, so that a 2-core machine runs a training step in about a second.
"""

from __future__ import annotations

import dataclasses
import numbers
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fdsm.registry import Registry

SIZES: tuple[str, ...] = ("paper", "cpu")
INTERFACES: tuple[str, ...] = ("log_density", "score", "sampler")


@dataclass(frozen=True)
class ModelSpec:
    """One registered model: ``cls(config)`` builds it from ``presets[size]`` with overrides applied."""

    name: str
    cls: type[nn.Module]
    presets: Mapping[str, Any]  # size -> frozen config dataclass
    interface: str
    summary: str

    def __post_init__(self):
        if set(self.presets) != set(SIZES):
            raise ValueError(f"model {self.name!r}: expected presets for sizes {SIZES}, got {sorted(self.presets)}")
        if self.interface not in INTERFACES:
            raise ValueError(f"model {self.name!r}: interface must be one of {INTERFACES}, got {self.interface!r}")


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, cls: type[nn.Module], *, paper: Any, cpu: Any, interface: str, summary: str) -> None:
    """Register ``cls`` under ``name`` with its paper and cpu configuration presets."""
    MODELS.register(name, ModelSpec(name, cls, {"paper": paper, "cpu": cpu}, interface, summary))


def model_config(name: str, size: str = "paper", **overrides: Any) -> Any:
    """The configuration ``build(name, size, **overrides)`` would use, without building anything.

    An unknown size or override key is a ValueError that lists the valid ones; an override whose type does not fit
    its field (``hidden=2.5`` for a tuple of ints, ``dim=True`` for an int) is a TypeError naming both, before the
    config's own checks of the values (a positive width, ...).
    """
    spec = MODELS.get(name)
    if size not in SIZES:
        raise ValueError(f"build({name!r}, size={size!r}): expected size in {SIZES}")
    preset = spec.presets[size]
    known = [f.name for f in dataclasses.fields(preset)]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(
            f"build({name!r}, size={size!r}, ...): unknown override(s) {unknown}; "
            f"{type(preset).__name__} accepts {known}"
        )
    hints = typing.get_type_hints(type(preset))
    for key, value in overrides.items():
        if not _has_type(value, hints[key]):
            raise TypeError(f"build({name!r}, size={size!r}, ...): expected {key} to be {_describe(hints[key])} "
                            f"({type(preset).__name__}.{key}), got {type(value).__name__} {value!r}")
    return dataclasses.replace(preset, **overrides)


# A config field's type -> what an override of it may be: an int also for a float, a list also for a tuple.
_SCALARS: dict[type, tuple[type, ...]] = {bool: (bool,), int: (numbers.Integral,), float: (numbers.Real,),
                                          str: (str,)}  # numpy's integers and floats among them


def _has_type(value: Any, annotation: Any) -> bool:
    """Whether an override ``value`` fits a config field of type ``annotation`` (a bool is no int or float); a
    type other than a scalar or a ``tuple[T, ...]`` of one is left to the config's own checks."""
    if annotation in _SCALARS:
        return isinstance(value, _SCALARS[annotation]) and (annotation is bool or not isinstance(value, bool))
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in _SCALARS:
        return isinstance(value, tuple | list) and all(_has_type(item, args[0]) for item in value)
    return True


def _describe(annotation: Any) -> str:
    if annotation in _SCALARS:
        return {bool: "True or False", int: "an int", float: "a number", str: "a string"}[annotation]
    return f"a tuple of {typing.get_args(annotation)[0].__name__}s"


def build(name: str, size: str = "paper", **overrides: Any) -> nn.Module:
    """Build the registered model ``name`` at ``size`` ("paper" or "cpu"), with config fields overridden.

    >>> model = build("gaussian", size="cpu", dim=3)
    >>> model.log_density(torch.zeros(4, 3)).shape
    torch.Size([4])

    To count the parameters of a large model cheaply, build it on the meta device:
    ``with torch.device("meta"): build("deep-ebm")``.
    """
    return MODELS.get(name).cls(model_config(name, size, **overrides))


def check_event(owner: str, x: torch.Tensor, event_shape: tuple[int, ...]) -> None:
    """Raise a ValueError naming ``owner`` unless ``x`` has shape (B, *event_shape) with B >= 1."""
    if tuple(x.shape[1:]) != tuple(event_shape) or x.dim() == 0 or x.shape[0] < 1:
        raise ValueError(f"{owner}: expected x of shape (B, {', '.join(map(str, event_shape))}), got {tuple(x.shape)}")


def match_batch(owner: str, cond: torch.Tensor, batch: int) -> torch.Tensor:
    """A conditioning input ``cond`` (n, ...) for a batch of ``batch`` rows, tiled k times when batch = k n: a
    batched FD forward stacks k perturbed copies of the n rows (NCSN's sigma, the VAE score net's x).

    See NOTE [point-major stacked batch] in fdsm.fd.
    """
    n = cond.shape[0]
    if n == batch:
        return cond
    if n == 0 or batch % n:
        raise ValueError(
            f"{owner}: the conditioning input has {n} rows for a batch of {batch}; expected {batch} rows, or a "
            f"divisor of {batch} for a concatenated batch"
        )
    return cond.repeat(batch // n, *([1] * (cond.dim() - 1)))


def parameter_count(model: nn.Module) -> int:
    """The number of scalar parameters of ``model`` (every parameter here is in use and trainable)."""
    return sum(p.numel() for p in model.parameters())
