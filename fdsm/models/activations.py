"""Activation functions by name, shared by every model family that lets the activation be chosen.

``nsoftplus`` is the normalized softplus of the deep EBM's released runs: softplus(x) - log 2, so that f(0) = 0.
Smooth activations (softplus, nsoftplus, tanh, swish) have derivatives of every order; ELU's second derivative
jumps at 0 and ReLU's vanishes, which matters for score matching and for high-order directional derivatives.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from fdsm.registry import Registry


class NormalizedSoftplus(nn.Module):
    """softplus(x) - log 2: a smooth ReLU with f(0) = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x) - math.log(2.0)


ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation")
ACTIVATIONS.register("elu", nn.ELU)
ACTIVATIONS.register("nsoftplus", NormalizedSoftplus)
ACTIVATIONS.register("softplus", nn.Softplus)
ACTIVATIONS.register("tanh", nn.Tanh)
ACTIVATIONS.register("swish", nn.SiLU)
ACTIVATIONS.register("relu", nn.ReLU)


def activation(name: str) -> nn.Module:
    """A fresh activation module for ``name``; an unknown name lists the valid ones."""
    return ACTIVATIONS.get(name)()


def check_activation(owner: str, name: str) -> None:
    """Raise a ValueError naming ``owner`` (a config class) when ``name`` is not a registered activation."""
    if name not in ACTIVATIONS:
        raise ValueError(f"{owner}(activation={name!r}): expected one of {ACTIVATIONS.names()}")
