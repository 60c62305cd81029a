"""The base class of the energy-based models: a subclass supplies E(x), the base class gives log p~(x) = -E(x).

Every EBM in the paper's code returns an energy and sets log p = -E (paper-code-notes section 1.0); this is the one
place that sign lives.
"""

from __future__ import annotations

import torch
from torch import nn

from fdsm.models.spec import check_event


class EnergyModel(nn.Module):
    """Interface: ``energy(x)`` and ``log_density(x) = -energy(x)`` (unnormalized), (B, *event) -> (B,);
    ``forward`` is ``log_density``. Subclasses set ``self.config`` (with ``event_shape``) and define ``_energy``."""

    config: object

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.config.event_shape

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define _energy(x) -> (B,)")

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x): (B, *event) -> (B,), after checking the input shape."""
        check_event(type(self).__name__, x, self.event_shape)
        return self._energy(x)

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """log p~(x) = -E(x): (B, *event) -> (B,)."""
        return -self.energy(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_density(x)
