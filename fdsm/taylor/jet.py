"""The value a Taylor rule takes and returns: a ``Jet``, the truncated Taylor series of one tensor along x + t v."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Jet:
    r"""The series :math:`z(t) = \sum_{k=0}^{K} z_k t^k` of a tensor z that depends on x, along x(t) = x + t v.

    ``series``: (K+1, *shape), the *normalized* coefficients :math:`z_k = z^{(k)}(0)/k!` stacked along a leading
    coefficient axis; ``series[0]`` is the primal value z(0). Values that do not depend on x are plain tensors
    (or Python numbers), never Jets.
    """

    series: Tensor

    @property
    def order(self) -> int:
        """K, the highest coefficient carried."""
        return self.series.shape[0] - 1

    @property
    def primal(self) -> Tensor:
        return self.series[0]

    @property
    def shape(self) -> torch.Size:
        """The shape of the tensor z itself (without the coefficient axis)."""
        return self.series.shape[1:]

    @property
    def ndim(self) -> int:
        return self.series.dim() - 1

    @property
    def dtype(self) -> torch.dtype:
        return self.series.dtype

    def aligned(self, ndim: int) -> Tensor:
        """The series with singleton dims inserted after the coefficient axis so that z has ``ndim`` dims: it then
        broadcasts against a plain (ndim)-dim tensor from the right, with the coefficient axis kept apart."""
        extra = ndim - self.ndim
        return self.series if extra <= 0 else self.series.view(self.order + 1, *([1] * extra), *self.shape)


def jets_in(value: object) -> Iterator[Jet]:
    """Every Jet in a node's argument, looking inside lists and tuples (``cat`` takes a list of tensors)."""
    if isinstance(value, Jet):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from jets_in(item)


def primal_of(value: object) -> object:
    """The value with every Jet replaced by its primal: what the untransformed op would have been called with."""
    if isinstance(value, Jet):
        return value.primal
    if isinstance(value, (list, tuple)):
        return type(value)(primal_of(item) for item in value)
    return value
