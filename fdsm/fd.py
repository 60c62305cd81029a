r"""Finite-difference executors: the same stencil sum, evaluated four ways.

Every executor computes (section 3.2, Lemma 1 and Theorem 1)

.. math::
    D^T f(x) \approx \sum_{i=1}^{S} w_i\, f(x + \gamma_i v),

and they differ only in how the S forwards :math:`f(x + \gamma_i v)` are run:

- ``fd_serial``: one forward per stencil point, in sequence (the repos' "_nop" variants).
- ``fd_batched``: all points stacked along the batch axis into one (S*B, *event) forward (the paper's "parallel"
  FD, appendix C.1).
- ``fd_streams``: one forward per point, run concurrently. See NOTE [fd-streams backends].
- ``fd_fused``: ``fd_batched`` with Triton kernels at both ends (``kernels.stencil_apply``): one pass over x and v
  builds the inputs, one pass over the outputs combines them.

The S outputs, stacked as (S, B, *k), are combined by ``apply_stencil``. The combination runs in at least
float32, since it is where FD cancels (its weights grow like 2^T).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

import kernels
from fdsm.stencils import Stencil
from kernels.constants import constant

Fn = Callable[[Tensor], Tensor]


def apply_stencil(outputs: Tensor, stencil: Stencil) -> Tensor:
    r""":math:`\sum_i w_i F_i`; outputs: (S, B, *k) -> (B, *k), in the outputs' dtype."""
    acc = torch.promote_types(outputs.dtype, torch.float32)
    w = constant(stencil.weights, acc, outputs.device)  # (S,)
    return torch.tensordot(w, outputs.to(acc), dims=1).to(outputs.dtype)  # (S,) . (S, B, *k) -> (B, *k)


# NOTE [point-major stacked batch]
# A batched FD forward evaluates the S stencil points of a batch x: (B, *event) as one stacked batch laid out
# point-major: (S*B, *event), where row s*B + b is point s of sample b, x[b] + gamma_s v[b] (all B samples of point
# 0, then all B of point 1, ...). Its outputs (S*B, *k) therefore unflatten to (S, B, *k), block s holding f at
# point s, which is what ``apply_stencil`` and ``kernels.combine`` weigh; and a per-sample conditioning input cond:
# (B, ...) given for the B original rows follows the stack as cond.repeat(S, 1, ...), the whole batch tiled S times
# (not repeat_interleave), so that row s*B + b gets cond[b], as the paper's code does with cat([y, y]).
# The layout is a contract shared by ``stencil_inputs`` / ``stencil_outputs`` here, ``kernels.perturb``,
# ``fdsm.models.spec.match_batch`` (NCSN's sigma, the VAE score net's images) and
# ``fdsm.objectives.noise_conditional`` (its conditioned score): change it in all of them or in none.


def stencil_inputs(x: Tensor, v: Tensor, stencil: Stencil | tuple[float, ...]) -> Tensor:
    r"""All points :math:`x + \gamma_i v`, stacked: x, v: (B, *event) -> (S*B, *event). ``stencil`` may also be
    the offsets alone (the probes of ``fdsm.fd_error`` stack a ladder of them).

    See NOTE [point-major stacked batch].
    """
    offsets = stencil.offsets if isinstance(stencil, Stencil) else tuple(stencil)
    gamma = constant(offsets, x.dtype, x.device)  # (S,)
    gamma = gamma.view(-1, *([1] * x.dim()))  # (S, 1, ..., 1)
    return (x.unsqueeze(0) + gamma * v.unsqueeze(0)).flatten(0, 1)  # (S, B, *event) -> (S*B, *event)


def stencil_outputs(f: Fn, x: Tensor, v: Tensor, stencil: Stencil, *, serial: bool = False) -> Tensor:
    r"""Every :math:`f(x + \gamma_i v)`, stacked: (S, B, *k). One forward of the stacked (S*B, *event) batch, or
    S separate forwards with ``serial=True``. The FD objectives use it too, for their stencil points."""
    if serial:
        return torch.stack([f(x + gamma * v) for gamma in stencil.offsets])  # S x (B, *k) -> (S, B, *k)
    return f(stencil_inputs(x, v, stencil)).unflatten(0, (len(stencil), x.shape[0]))  # (S*B, *k) -> (S, B, *k)


def fd_serial(f: Fn, x: Tensor, v: Tensor, order: int, *, stencil: Stencil) -> Tensor:
    """One forward per stencil point, in sequence."""
    return apply_stencil(stencil_outputs(f, x, v, stencil, serial=True), stencil)


def fd_batched(f: Fn, x: Tensor, v: Tensor, order: int, *, stencil: Stencil) -> Tensor:
    """All stencil points in one forward of batch S*B."""
    return apply_stencil(stencil_outputs(f, x, v, stencil), stencil)


# NOTE [fd-streams backends]
# The S forwards of a stencil are independent, so they can run at the same time.
# - CUDA ("cuda-streams"): each point runs on its own side stream. Every side stream first waits on the
#   producer (current) stream, so it sees x and v fully written; the producer waits on every side stream before
#   the combination. x and v are marked as used on each side stream, and each output as used on the producer,
#   so the caching allocator cannot hand their memory to another stream while work on it is pending. Autograd
#   runs each backward op on the stream of its forward op and inserts the cross-stream syncs itself.
# - CPU ("cpu-threads"): each point runs in its own worker thread. Torch releases the GIL inside its ops, so the
#   forwards overlap where the intra-op thread pool leaves cores free. Grad mode is thread-local, so each worker
#   takes the caller's.
# The backend is a function of the device alone; `streams_backend` reports it so that results can record it.


def streams_backend(device: torch.device | str) -> str:
    """The backend ``fd-streams`` uses on ``device``: ``"cuda-streams"`` or ``"cpu-threads"``."""
    return "cuda-streams" if torch.device(device).type == "cuda" else "cpu-threads"


@functools.cache
def _thread_pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fd-streams")


_side_streams: dict[tuple[torch.device, int], torch.cuda.Stream] = {}


def _side_stream(device: torch.device, i: int) -> torch.cuda.Stream:
    key = (device, i)
    if key not in _side_streams:
        _side_streams[key] = torch.cuda.Stream(device)
    return _side_streams[key]


def _forward_on_cuda_streams(f: Fn, x: Tensor, v: Tensor, stencil: Stencil) -> list[Tensor]:
    producer = torch.cuda.current_stream(x.device)
    outputs = []
    for i, gamma in enumerate(stencil.offsets):
        side = _side_stream(x.device, i)
        side.wait_stream(producer)  # x and v are ready before the side stream reads them
        x.record_stream(side)
        v.record_stream(side)
        with torch.cuda.stream(side):
            outputs.append(f(x + gamma * v))
    for i, out in enumerate(outputs):
        producer.wait_stream(_side_stream(x.device, i))  # every output is written before it is combined
        out.record_stream(producer)
    return outputs


def _forward_on_threads(f: Fn, x: Tensor, v: Tensor, stencil: Stencil) -> list[Tensor]:
    grad_enabled = torch.is_grad_enabled()

    def point(gamma: float) -> Tensor:
        with torch.set_grad_enabled(grad_enabled):
            return f(x + gamma * v)

    return list(_thread_pool(len(stencil)).map(point, stencil.offsets))


def fd_streams(f: Fn, x: Tensor, v: Tensor, order: int, *, stencil: Stencil) -> Tensor:
    """One forward per stencil point, run concurrently (see NOTE [fd-streams backends])."""
    run = _forward_on_cuda_streams if x.device.type == "cuda" else _forward_on_threads
    return apply_stencil(torch.stack(run(f, x, v, stencil)), stencil)


def fd_fused(f: Fn, x: Tensor, v: Tensor, order: int, *, stencil: Stencil, backend: str = "triton") -> Tensor:
    """fd-batched with fused ends: the Triton perturb kernel builds the (S*B, *event) inputs in one pass, and the
    combine kernel sums the S outputs with the weights in one pass."""
    return kernels.stencil_apply(f, x, v, stencil.offsets, stencil.weights, backend=backend)
