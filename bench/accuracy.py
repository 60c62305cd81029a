r"""Relative error of a derivative against its float64 reference (DESIGN.md, measurement rules).

Per sample b of a batch,

.. math::
    e_b = \frac{\lVert D_b - D^{\mathrm{ref}}_b \rVert}{\lVert D^{\mathrm{ref}}_b \rVert},

with :math:`D^{\mathrm{ref}}` from ``fdsm.float64_reference`` (an exact method, in float64, on a float64 copy of the
model) and the norm over the output features (the absolute value for a scalar log-density). The row reports the
median of :math:`e_b` over the batch (``rel_error``) and its maximum (``rel_error_max``). Both are computed in float64.

>>> error = relative_error(torch.tensor([1.01, 2.0, -3.3]), torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64))
>>> round(error.median, 6), round(error.max, 6)  # float32 inputs: 1.01 is 1.0099999904...
(0.01, 0.1)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class RelativeError:
    median: float  # median over the batch of |D_b - D_ref_b| / |D_ref_b|
    max: float  # the worst sample


def relative_error(d: Tensor, d_ref: Tensor) -> RelativeError:
    """d, d_ref: (B,) or (B, k), the same shape; returns the batch median and max of the per-sample error."""
    if d.shape != d_ref.shape:
        raise ValueError(f"relative_error(d, d_ref): expected the same shapes, got {tuple(d.shape)} and "
                         f"{tuple(d_ref.shape)}; compare a derivative with the reference for the same x and v")
    d, d_ref = d.detach().double().cpu(), d_ref.detach().double().cpu()
    diff = (d - d_ref).reshape(d.shape[0], -1).norm(dim=1)  # (B,)
    scale = d_ref.reshape(d.shape[0], -1).norm(dim=1)  # (B,)
    per_sample = diff / scale  # inf or nan where the reference is 0: a real failure of the comparison, kept
    return RelativeError(median=torch.quantile(per_sample, 0.5).item(), max=per_sample.max().item())
