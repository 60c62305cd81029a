r"""Stencil-parallel finite differences, ``fd-distributed``: the S stencil points spread over the ranks of a group.

The stencil sum of every FD executor (``fdsm.fd``; section 3.2, Lemma 1 and Theorem 1) splits over the N ranks of an
initialized ``torch.distributed`` process group:

.. math::
    D^T f(x) \approx \sum_{i=1}^{S} w_i\, f(x + \gamma_i v) = \sum_{r=0}^{N-1} P_r, \qquad
    P_r = \sum_{i \in I_r} w_i\, f(x + \gamma_i v), \qquad I_r = \{\, i : i \equiv r \pmod N \,\}.

Every rank holds the model and the same x, v: (B, *event). Rank r evaluates only its points I_r, in one stacked
forward of (|I_r| B, *event) as ``fd-batched`` does (NOTE [point-major stacked batch] in ``fdsm.fd``), weighs them
into P_r: (B, *k), and one all-reduce (SUM) gives every rank the whole sum D: (B, *k). This is the multi-device form
of ``fd-streams``: the forwards are independent, so they can run on different devices. The exact methods cannot
split this way: their T levels (nested backward or forward passes, or the Taylor coefficients) are sequential.

With the S = T + 1 points of ``central_stencil(T)`` (the centre among them for even T), N ranks give each rank at
most ceil(S / N) points, evaluated as one forward of that many times B rows; a rank with no point (N > S) evaluates
the first point with weight 0, so that it takes part in the collectives with a share of D's shape, in the others'
graph (f's parameters, x and v), whose gradients are zeros.

NOTE [the gradient contract of fd-distributed]
D is differentiable in the parameters inside f (and in x), since the all-reduce is linear. The contract is DDP's:
**the ranks' parameter gradients sum to the gradient of the loss**, for the caller's all-reduce (SUM), rather than
every rank ending with the whole gradient. Rank r can only differentiate its own forwards: its ``p.grad`` after
``loss.backward()`` is :math:`(\partial P_r / \partial \theta)^\top \bar g`, and these add up over the ranks to
:math:`(\partial D / \partial \theta)^\top \bar g`. ``sum_gradients(module)`` is that all-reduce, after which every
rank holds the whole gradient. Under ``DistributedDataParallel``, which averages, that is a loss scaled by N.

The backward of the all-reduce itself is the *mean* of the ranks' cotangents, :math:`\bar g = \frac1N \sum_s g_s`:
the gradient of the mean of the ranks' losses, :math:`\frac1N \sum_s L_s(D)`. When every rank computes the same
loss from the same D (the usual case: D is replicated), :math:`g_s = g` and :math:`\bar g = g`. A naive
differentiable all-reduce (``torch.distributed.nn.functional.all_reduce``) takes the *sum* as its backward, the
adjoint of a sum, which in that replicated case is N g: every gradient N times too large (the world-size factor;
``tests/test_distributed.py`` shows it). That mean is the gradient for one backward; a second derivative through it
(a gradient of D taken with create_graph=True, then differentiated, as a gradient penalty does) is refused with
``fdsm.NotSupported``: the gradients each rank holds for its own points are not replicated, and no rule of this
backward gives their loss's derivative.

Communication: a forward is one all-reduce of B·k numbers (D's size), in at least float32. A backward through it is
one more all-reduce of B·k numbers (the cotangents' mean), on every rank, so every rank must run its backward; the
parameter gradients then need the caller's all-reduce of the model's size (``sum_gradients``, or DDP's buckets).

Each collective runs under the process group's timeout (``init_process_group(timeout=...)``; gloo's default is 30
minutes): a rank that died or hung makes the others raise a ``RuntimeError`` that names the collective, the rank and
the timeout, never a hang.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fdsm.fd import stencil_inputs
from fdsm.registry import NotSupported
from fdsm.stencils import Stencil, central_stencil
from kernels.constants import constant

Fn = Callable[[Tensor], Tensor]
_WHO = "directional_derivative(f, x, v, order, method='fd-distributed')"
NO_PROCESS_GROUP = ("needs an initialized torch.distributed process group (launch with torchrun and call "
                    "torch.distributed.init_process_group, or bench.distributed_case.init_process_group); none is "
                    "initialized in this process; use 'fd-batched' in a single process")


def process_group_ready() -> bool:
    """Whether ``fd-distributed`` can run in this process: torch.distributed is built and a group is initialized."""
    return dist.is_available() and dist.is_initialized()


class ProcessGroupReady:
    """True while a default process group is initialized: ``fd-distributed``'s ``enabled`` in ``fdsm.METHODS``.

    NOTE [an entry enabled while a process group exists]
    Whether ``fd-distributed`` can run is a property of the process *now*, not of the machine: the same worker is
    without a group before ``init_process_group`` and with one after. So its registry entry is enabled by this
    object, which ``bool()`` evaluates on every lookup, rather than by a value fixed at import: ``METHODS.get``
    refuses it with ``NO_PROCESS_GROUP`` outside a group, the sweeps over every method give it an ``unsupported``
    row with that reason, and under ``torchrun`` it runs.
    """

    def __bool__(self) -> bool:
        return process_group_ready()

    def __repr__(self) -> str:
        return f"ProcessGroupReady({process_group_ready()})"


def _group_timeout(group: dist.ProcessGroup | None) -> str:
    """The timeout of the group's collectives, as text ("7 s"), or "unknown" where this torch does not say."""
    pg = group or dist.group.WORLD
    for device in ("cpu", "cuda"):
        try:
            timeout = pg._get_backend(torch.device(device)).options._timeout  # private: read only for the message
        except Exception:  # no backend for that device, or the private API moved: the message says less
            continue
        if isinstance(timeout, datetime.timedelta):
            return f"{timeout.total_seconds():g} s"
    return "unknown"


def all_reduce(tensor: Tensor, *, what: str, who: str = "fd-distributed",
               op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM, group: dist.ProcessGroup | None = None) -> Tensor:
    """``dist.all_reduce(tensor, op)`` in place; a failure (a rank that died, or one that hung past the group's
    timeout) is a ``RuntimeError`` naming ``who``, ``what`` was reduced, this rank, the time waited and the remedy."""
    start = time.perf_counter()
    try:
        dist.all_reduce(tensor, op=op, group=group)
    except Exception as err:  # gloo: DistBackendError / RuntimeError ("Connection closed by peer", "Timed out")
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        raise RuntimeError(
            f"{who}: the all-reduce of {what} failed on rank {rank} of {world} after "
            f"{time.perf_counter() - start:.1f} s (group timeout {_group_timeout(group)}): another rank died, raised "
            f"or hung before it ({type(err).__name__}: {' '.join(str(err).split())[:300]}); see that rank's error, "
            "and give init_process_group a shorter timeout to fail sooner") from err
    return tensor


class _SumOverRanks(torch.autograd.Function):
    r"""D = \sum_r P_r on every rank; backward: the mean of the ranks' cotangents (NOTE [the gradient contract of
    fd-distributed]). P_r: (B, *k), in the accumulation dtype."""

    @staticmethod
    def forward(ctx, partial: Tensor, group: dist.ProcessGroup | None) -> Tensor:
        ctx.group = group
        return all_reduce(partial.clone(), what=f"the partial stencil sums {tuple(partial.shape)}", group=group)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        world = dist.get_world_size(ctx.group)
        with torch.no_grad():
            mean = all_reduce(grad.contiguous().clone(), what=f"the cotangents of D {tuple(grad.shape)}",
                              group=ctx.group) / world  # mean_s g_s: g itself when every rank's loss is alike
        return (_NoSecondDerivative.apply(grad, mean) if torch.is_grad_enabled() else mean), None


class _NoSecondDerivative(torch.autograd.Function):
    """``_SumOverRanks``' backward where it records a graph (create_graph=True), refusing a derivative through it:
    the mean of the ranks' cotangents is the gradient of a loss all ranks compute alike, and a loss of the gradients
    that each rank holds for its own points is not that, so no rule of this backward holds for its derivative (an
    all_reduce in place has no autograd formula: autograd took it for a copy of this rank's cotangent alone, and a
    gradient penalty came out wrong)."""

    @staticmethod
    def forward(ctx, grad: Tensor, mean: Tensor) -> Tensor:  # the mean, in the graph of the cotangent it came from
        return mean.clone()

    @staticmethod
    def backward(ctx, _: Tensor) -> tuple[Tensor, Tensor]:
        raise NotSupported(f"{_WHO}: a second derivative through D (a gradient of D taken with create_graph=True, "
                           "then differentiated again) is not supported: its backward averages the ranks' "
                           "cotangents, which holds for one backward only; use 'fd-batched' in one process for it")


def points_of(rank: int, world: int, points: int) -> list[int]:
    """I_r: the stencil points rank ``rank`` of ``world`` evaluates, i = r, r + N, r + 2N, ... below S.

    >>> [points_of(r, 2, 5) for r in range(2)], points_of(2, 3, 2)
    ([[0, 2, 4], [1, 3]], [])
    """
    return list(range(rank, points, world))


def fd_distributed(f: Fn, x: Tensor, v: Tensor, order: int, *, stencil: Stencil | None = None,
                   group: dist.ProcessGroup | None = None) -> Tensor:
    r""":math:`\sum_i w_i f(x + \gamma_i v)` with the points spread over the ranks (see the module docstring).

    Args:
        f: maps (N, *event) to (N,) or (N, k), each sample independently; the same function on every rank.
        x, v: (B, *event), the same on every rank.
        order: T >= 1.
        stencil: default ``central_stencil(order)``; the same on every rank.
        group: the process group (default: the default group).

    Returns:
        D: (B,) or (B, k), like f(x), the same on every rank; differentiable, with the ranks' gradients summing to
        the gradient (NOTE [the gradient contract of fd-distributed]).

    Raises ``RuntimeError`` (``NO_PROCESS_GROUP``) without an initialized process group.
    """
    if not process_group_ready():
        raise RuntimeError(f"{_WHO}: {NO_PROCESS_GROUP}")
    stencil = central_stencil(order) if stencil is None else stencil
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if rank < 0:
        raise ValueError(f"{_WHO}: this process is not a member of the given group (its ranks do not include this "
                         "one); call fd-distributed on the group's members only, or pass group=None")
    mine = points_of(rank, world, len(stencil))
    # N > S: no point here, but this rank joins the collectives: it evaluates the first point with weight 0, so that
    # its share has D's shape and dtype and the others' graph (f's parameters, x and v), with zero gradients
    part = Stencil(stencil.order, tuple(stencil.offsets[i] for i in mine or [0]),
                   tuple(stencil.weights[i] if mine else 0.0 for i in mine or [0]), stencil.accuracy)  # a share only
    outputs = f(stencil_inputs(x, v, part)).unflatten(0, (len(part), x.shape[0]))  # (|I_r|B, *k) -> (|I_r|, B, *k)
    acc = torch.promote_types(outputs.dtype, torch.float32)  # where FD cancels, as fdsm.fd.apply_stencil
    w = constant(part.weights, acc, outputs.device)  # (|I_r|,)
    partial = torch.tensordot(w, outputs.to(acc), dims=1)  # (|I_r|,) . (|I_r|, B, *k) -> (B, *k)
    return _SumOverRanks.apply(partial, group).to(outputs.dtype)  # (B, *k), the same on every rank


def sum_gradients(module: nn.Module, *, group: dist.ProcessGroup | None = None) -> None:
    """All-reduce (SUM) every parameter gradient of ``module`` in place, so that each rank holds the whole gradient
    after a backward through ``fd_distributed`` (NOTE [the gradient contract of fd-distributed]). A parameter
    without a gradient on this rank takes part with zeros; the grads are then set on every rank."""
    if not process_group_ready():
        raise RuntimeError(f"sum_gradients(module): {NO_PROCESS_GROUP}")
    for p in module.parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        all_reduce(p.grad, what=f"a parameter gradient {tuple(p.shape)}", who="sum_gradients(module)", group=group)
