r"""Maximum likelihood, the baseline of table 3 (NICE trained by MLE): :math:`-\log p(x)` per sample.

Only for models with a normalized, tractable log-density (a flow). It is in nats per sample, not divided by d:
it is compared with the score-matching objectives by time per step, not by value.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from fdsm.objectives.checks import check_batch, check_reduction, checked_log_density, reduce


def mle_loss(log_density: Callable[[Tensor], Tensor], x: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Negative log-likelihood :math:`-\log p(x)`; log_density: (B, *event) -> (B,), normalized."""
    who = "mle_loss(log_density, x)"
    check_reduction(who, reduction)
    return reduce(who, -checked_log_density(who, log_density)(check_batch(who, x)), reduction)
