"""Small constant tensors (stencil weights and offsets, series coefficients), made once per (values, dtype, device).

``torch.tensor(..., device="cuda")`` is a blocking host-to-device copy, which would otherwise sit in every timed
call that needs a handful of numbers. The cached tensors are shared by every caller, so they are never written to,
and never inference tensors: a first call under ``torch.inference_mode`` must not poison later autograd calls.

This sits in ``kernels``, the lowest layer, so that both the kernel launchers (``kernels.fused_op``) and the
library above (``fdsm.fd``, ``fdsm.taylor``) share the one cache.

>>> w = constant((0.5, -0.5), torch.float64, torch.device("cpu"))
>>> w.tolist(), w is constant((0.5, -0.5), torch.float64, torch.device("cpu"))
([0.5, -0.5], True)
>>> with torch.inference_mode():
...     made_under_inference = constant((1.0, 2.0), torch.float32, torch.device("cpu"))
>>> made_under_inference.is_inference()
False
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
