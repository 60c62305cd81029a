"""A model in another precision, complex parameters included."""

from __future__ import annotations

import torch
from torch import nn

COMPLEX_OF = {torch.float64: torch.complex128, torch.float32: torch.complex64, torch.float16: torch.complex32}


def to_dtype(model: nn.Module, dtype: torch.dtype, device: torch.device | str | None = None) -> nn.Module:
    """``model`` (in place, returned, on ``device`` if given) with its floating parameters and buffers in the real
    floating ``dtype``, and its complex ones in the complex dtype of the same precision (float64 -> complex128;
    bfloat16 has no complex counterpart, so complex tensors keep theirs there).

    ``nn.Module.to(torch.float64)`` casts a complex parameter to float64 itself, dropping its imaginary part with a
    warning only, and ``.double()`` leaves it complex64: a spectral convolution's weights (FNO) would make a float64
    reference of another model, or of float32 precision.

    >>> m = nn.Linear(2, 1); m.register_buffer("w", torch.tensor([1 + 2j]))
    >>> to_dtype(m, torch.float64).w, m.weight.dtype
    (tensor([1.+2.j], dtype=torch.complex128), torch.float64)
    """
    if not dtype.is_floating_point:
        raise ValueError(f"to_dtype(model, dtype): expected a real floating dtype, got {dtype}")
    complex_dtype = COMPLEX_OF.get(dtype)

    def cast(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        if t.is_complex() and complex_dtype is not None:
            return t.to(device=device, dtype=complex_dtype)
        return t.to(device=device)

    return model._apply(cast)
