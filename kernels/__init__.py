"""Triton kernels for the memory-bound parts of finite-difference score matching, each beside its torch reference.

- :func:`perturb` and :func:`combine` (``kernels.stencil``): build the S stencil inputs x + gamma_s v in one pass,
  and sum the S outputs with the stencil weights in one pass; each is the other's backward. :func:`stencil_apply`
  puts a batched forward of f between them (``fdsm``'s ``fd-fused`` directional derivative).
- :func:`fd_ssm_head`, :func:`fd_dsm_head`, :func:`fd_ssmvr_head` (``kernels.loss_heads``): the per-sample FD
  losses of paper section 4 (eqs. 9, 10 and FD-SSMVR) and their gradients, one pass each.

Every op takes ``backend="auto" | "triton" | "torch"``: ``auto`` runs Triton on CUDA tensors when Triton imports,
and the torch reference otherwise; ``triton`` on CPU tensors needs the interpreter (``TRITON_INTERPRET=1`` before
import; see ``kernels.backend``). The references (``*_reference``) are the oracle of the tests and the baseline
of ``fdsm-bench kernels``. This package imports only torch and, when present, triton; nothing runs at import.
"""

from kernels.backend import BACKENDS, HAS_TRITON, INTERPRET, TRITON_IMPORT_ERROR, resolve_backend
from kernels.fused_op import poison_outputs
from kernels.loss_heads import (
    fd_dsm_head,
    fd_dsm_reference,
    fd_ssm_head,
    fd_ssm_reference,
    fd_ssmvr_head,
    fd_ssmvr_reference,
)
from kernels.stencil import combine, combine_reference, perturb, perturb_reference, stencil_apply

__all__ = [
    "BACKENDS",
    "HAS_TRITON",
    "INTERPRET",
    "TRITON_IMPORT_ERROR",
    "combine",
    "combine_reference",
    "fd_dsm_head",
    "fd_dsm_reference",
    "fd_ssm_head",
    "fd_ssm_reference",
    "fd_ssmvr_head",
    "fd_ssmvr_reference",
    "perturb",
    "perturb_reference",
    "poison_outputs",
    "resolve_backend",
    "stencil_apply",
]
