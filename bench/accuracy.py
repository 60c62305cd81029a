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

A sample whose reference is exactly 0 has no relative error: f is a polynomial of degree below T along v there
(a Gaussian's log-density at T >= 3), or piecewise one (a ReLU network). Such samples are left out of the median
and the maximum and counted (``zero_reference``), with their largest absolute error :math:`\lVert D_b\rVert`
(``zero_reference_abs``); where every sample's reference is 0, median and max are NaN and the caller says why.

>>> error = relative_error(torch.tensor([1e-7, 2.0]), torch.tensor([0.0, 2.0], dtype=torch.float64))
>>> error.median, error.zero_reference, error.zero_reference_abs
(0.0, 1, 1.0000000116860974e-07)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class RelativeError:
    median: float  # median over the batch of |D_b - D_ref_b| / |D_ref_b|, the samples with D_ref_b != 0
    max: float  # the worst of them
    zero_reference: int = 0  # samples whose reference is exactly 0, left out of median and max
    zero_reference_abs: float = 0.0  # their largest |D_b - D_ref_b| = |D_b|
    undefined: bool = False  # every sample's reference is 0: no relative error at all (median and max NaN)


def relative_error(d: Tensor, d_ref: Tensor) -> RelativeError:
    """d, d_ref: (B,) or (B, k), the same shape; returns the batch median and max of the per-sample error, over
    the samples whose reference is not 0 (the module docstring)."""
    if d.shape != d_ref.shape:
        raise ValueError(f"relative_error(d, d_ref): expected the same shapes, got {tuple(d.shape)} and "
                         f"{tuple(d_ref.shape)}; compare a derivative with the reference for the same x and v")
    d, d_ref = d.detach().double().cpu(), d_ref.detach().double().cpu()
    diff = (d - d_ref).reshape(d.shape[0], -1).norm(dim=1)  # (B,)
    scale = d_ref.reshape(d.shape[0], -1).norm(dim=1)  # (B,)
    zero = scale == 0
    per_sample = diff[~zero] / scale[~zero]  # inf or nan where D is: a real failure of the method, kept
    zero_abs = diff[zero].max().item() if zero.any() else 0.0
    if not len(per_sample):
        return RelativeError(math.nan, math.nan, int(zero.sum()), zero_abs, undefined=True)
    return RelativeError(torch.quantile(per_sample, 0.5).item(), per_sample.max().item(), int(zero.sum()), zero_abs)
