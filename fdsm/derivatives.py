r"""T-th order directional derivatives: one public function, a registry of methods, and the float64 reference.

.. math::
    D^T_v f(x) = \frac{d^T}{dt^T} f(x + t v)\Big|_{t=0} = (v^\top \nabla_x)^T f(x)
    = \varepsilon^T \frac{\partial^T}{\partial v^T} f(x), \qquad \varepsilon = \|v\|  \quad\text{(paper eq. 4)}

Methods (``METHODS``), all of signature ``(f, x, v, order, *, stencil) -> Tensor``:

============== ======================================================================================
exact-reverse  T nested ``torch.autograd.grad(create_graph=True)``: the paper's exact compute
exact-forward  T nested ``torch.func.jvp``
exact-taylor   Taylor mode: the T+1 coefficients of x + t v through an aten trace of f, one pass (``fdsm.taylor``)
fd-serial      one forward per stencil point, in sequence
fd-batched     all stencil points in one forward of batch S*B (the default)
fd-streams     one forward per point, concurrently: CUDA streams or CPU threads (``streams_backend``)
fd-fused       fd-batched with Triton kernels building the inputs and combining the outputs
============== ======================================================================================
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from fdsm import distributed, exact, fd, taylor
from fdsm.fd_error import TOLERANCE, check_fd_options, checked_estimate, richardson_stencil
from fdsm.models.casting import to_dtype
from fdsm.registry import Registry
from fdsm.stencils import Stencil, central_stencil, check_moments, check_order
from kernels.backend import triton_unavailable_reason

METHODS: Registry[Callable[..., Tensor]] = Registry("method")
METHODS.register("exact-reverse", exact.exact_reverse)
METHODS.register("exact-forward", exact.exact_forward)
METHODS.register("exact-taylor", taylor.exact_taylor)
METHODS.register("fd-serial", fd.fd_serial)
METHODS.register("fd-batched", fd.fd_batched)
METHODS.register("fd-streams", fd.fd_streams)
# fd-fused runs the Triton kernels or says why it cannot, never silently the torch fallback: it needs CUDA, or
# the Triton interpreter on the CPU (kernels/backend.py, NOTE [the Triton interpreter]).
_NO_FUSED = triton_unavailable_reason(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
METHODS.register("fd-fused", fd.fd_fused, enabled=_NO_FUSED is None, reason=f"{_NO_FUSED}; use 'fd-batched'")
METHODS.register("fd-distributed", distributed.fd_distributed, enabled=distributed.ProcessGroupReady(),
                 reason=distributed.NO_PROCESS_GROUP)  # NOTE [an entry enabled while a process group exists]

EXACT_METHODS = ("exact-reverse", "exact-forward", "exact-taylor")
FD_METHODS = ("fd-serial", "fd-batched", "fd-streams", "fd-fused", "fd-distributed")

_WHO = "directional_derivative(f, x, v, order)"


def _check_inputs(f: object, x: object, v: object, who: str = _WHO) -> None:
    if not callable(f):
        raise TypeError(f"{who}: expected f to be callable, got {type(f).__name__}")
    for name, t in (("x", x), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{who}: expected {name} to be a Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{who}: expected {name} to be floating point, got {t.dtype}")
    if x.dim() < 1 or len(x) == 0:
        raise ValueError(f"{who}: expected x of shape (B, *event) with B >= 1, got shape {tuple(x.shape)}")
    if v.shape != x.shape:
        raise ValueError(f"{who}: expected v of the same shape as x {tuple(x.shape)}, got {tuple(v.shape)}")
    if v.dtype != x.dtype or v.device != x.device:
        raise ValueError(f"{who}: expected v on x's dtype and device ({x.dtype}, {x.device}), "
                         f"got ({v.dtype}, {v.device})")


def _check_stencil(stencil: object, order: int, method: str, who: str = _WHO) -> Stencil | None:
    if stencil is None:
        return central_stencil(order) if method in FD_METHODS else None
    if not isinstance(stencil, Stencil):
        raise TypeError(f"{who}: expected stencil to be a fdsm.Stencil, got {type(stencil).__name__}")
    if stencil.order != order:
        raise ValueError(f"{who}: expected a stencil of order {order}, got one of order {stencil.order}; "
                         f"build it with central_stencil({order})")
    if method not in FD_METHODS:
        raise ValueError(f"{who}: method {method!r} is exact and takes no stencil; pass stencil=None")
    return check_moments(stencil, who)


def _checked(f: Callable[[Tensor], Tensor], batch: int | None, who: str = _WHO) -> Callable[[Tensor], Tensor]:
    """f, with its output checked: (N, *event) -> (N,) or (N, k), floating point, the same N as its input.
    ``batch`` is the user's B: where N differs (the batched FD methods stack their points), an error says so
    (None: not known when f is wrapped, as in ``fdsm.compiled``)."""

    def wrapped(inputs: Tensor) -> Tensor:
        out = f(inputs)
        if not isinstance(out, Tensor):
            raise TypeError(f"{who}: expected f to return a Tensor, got {type(out).__name__}")
        if not out.is_floating_point():  # an integer or bool output has no derivative, and the methods would
            raise TypeError(f"{who}: expected f to return a floating-point tensor, got {out.dtype}")  # disagree
        if out.dim() not in (1, 2) or out.shape[0] != inputs.shape[0]:
            stacked = (f" (the {inputs.shape[0] // batch} stencil points of the batch of {batch}, stacked into one"
                       " call)" if batch and inputs.shape[0] != batch else "")
            raise ValueError(f"{who}: expected f to map a batch of {inputs.shape[0]}{stacked} to shape "
                             f"({inputs.shape[0]},) or ({inputs.shape[0]}, k), got {tuple(out.shape)}")
        return out

    return wrapped


def directional_derivative(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, order: int, *,
                           method: str = "fd-batched", stencil: Stencil | None = None, step: str | None = None,
                           richardson: bool = False) -> Tensor:
    r"""The T-th directional derivative :math:`(v^\top\nabla_x)^T f(x)`, exactly or by finite differences.

    Args:
        f: maps (B, *event) to (B,) or (B, k), each sample independently.
        x: (B, *event), the points.
        v: (B, *event), the directions; :math:`\|v\|` is the FD step (the stencil offsets scale it).
        order: T >= 1.
        method: one of ``METHODS.names()`` (see the module docstring).
        stencil: FD methods only; default ``central_stencil(order)`` (Theorem 1, error O(|v|^2)); with
            ``step="auto"``, the accuracy of ``default_accuracy`` (module ``fdsm/fd_error.py``).
        step: FD methods only. ``None`` (default): |v| is the step. ``"auto"``: the step is chosen per sample from
            probes of f (``fdsm/fd_error.py``), and the result is still the derivative along v: the stencil runs
            at step h along v/|v|, rescaled by (|v|/h)^T. ``fdsm.fd_estimate(...)`` also returns the step and
            the estimated error.
        richardson: FD methods only: Richardson extrapolation of the stencil at the step and at half of it
            (``fdsm.richardson_stencil``, accuracy p -> p + 2), in the same forward.

    Returns:
        (B,) or (B, k), like ``f(x)``; differentiable with respect to the parameters inside ``f``.

    >>> x, v = torch.tensor([[1.0, 2.0]], dtype=torch.float64), torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    >>> f = lambda x: (x[:, 0] + 3 * x[:, 1]) ** 4          # D^4 f = 4! (v0 + 3 v1)^4 = 24 * 2.5^4
    >>> directional_derivative(f, x, v, 4, method="exact-reverse").item()
    937.5
    >>> round(directional_derivative(f, x, v, 4, method="fd-batched").item(), 6)  # exact for a quartic
    937.5
    """
    order = check_order(order, _WHO)
    _check_inputs(f, x, v)
    run = METHODS.get(method)
    if step is not None:  # the automatic step (fdsm.fd_estimate), which checks its own options
        return checked_estimate(f, x, v, order, method=method, stencil=stencil, step=step, richardson=richardson,
                                tolerance=TOLERANCE, warn=True, who=_WHO).derivative
    checked_stencil = _check_stencil(stencil, order, method)
    if richardson is not False:
        check_fd_options(method, step, richardson, _WHO)
        checked_stencil = richardson_stencil(checked_stencil)
    return run(_checked(f, len(x)), x, v, order, stencil=checked_stencil)


def float64_reference(model: nn.Module, x: Tensor, v: Tensor, order: int, *,
                      fn: Callable[[nn.Module, Tensor], Tensor] | None = None,
                      method: str = "exact-taylor", chunk: int | None = None) -> Tensor:
    r"""D_ref: the exact T-th directional derivative in float64, on a float64 deep copy of ``model``.

    ``fn(module, x)`` gives the function to differentiate (default ``module(x)``, e.g.
    ``lambda m, x: m.log_density(x)``). The copy's parameters need no gradient, and the result is detached:
    it is the reference of ``rel_error = |D - D_ref| / |D_ref|`` (DESIGN.md, measurement rules). With ``chunk``,
    the samples (independent) go through the one copy ``chunk`` at a time, so that the exact method's memory at
    high T scales with the chunk, not the batch.

    The default method is Taylor mode: one pass whatever T (nested reverse mode's memory grows exponentially with
    it), and right through PyTorch's fused normalizations, where nested autograd is not: through ``F.layer_norm``,
    ``F.instance_norm`` and a batch norm in training mode, ``exact-reverse`` is wrong from T = 3 and
    ``exact-forward`` from T = 2 (pytorch/pytorch#175754, #186256, #196700; ``tests/test_taylor.py`` pins it).
    For an f with an op that Taylor mode has no rule for it raises ``fdsm.NotSupported`` naming the op; pass
    ``method="exact-reverse"`` there (or register the rule, ``fdsm.taylor.register_rule``).
    """
    who = "float64_reference(model, x, v, order)"
    if method not in EXACT_METHODS:
        raise ValueError(f"{who}: expected an exact method {EXACT_METHODS}, got {method!r}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"{who}: expected chunk to be an int >= 1 or None, got {chunk!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who}: expected model to be a torch.nn.Module (fn(model, x) gives the function), got "
                        f"{type(model).__name__}")
    order = check_order(order, who)
    _check_inputs(model if fn is None else fn, x, v, who)  # before the cast to float64
    reference = to_dtype(copy.deepcopy(model), torch.float64).requires_grad_(False)
    call = fn if fn is not None else (lambda m, inputs: m(inputs))
    x, v = x.detach().double(), v.detach().double()
    size = chunk or max(len(x), 1)
    return torch.cat([directional_derivative(lambda inputs: call(reference, inputs), xc, vc, order, method=method)
                      .detach() for xc, vc in zip(x.split(size), v.split(size), strict=True)])
