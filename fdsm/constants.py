"""Small constant tensors (stencil weights, series coefficients), made once per (values, dtype, device).

``torch.tensor(..., device="cuda")`` is a blocking host-to-device copy, which would otherwise sit in every timed
call that needs a handful of numbers. The cached tensors are never written to, and never inference tensors: a first
call under ``torch.inference_mode`` must not poison later autograd calls.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.lru_cache(maxsize=256)
def constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.tensor(values, dtype=dtype, device=device)``, made once."""
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device)
