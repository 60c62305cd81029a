r"""The rank side of the scale-out experiments (``fdsm-bench scaling``, ``stencil-scaling``) and their launcher.

``launch(spec, world_size)`` runs ``torchrun --standalone --nproc-per-node N -m bench.distributed_case SPEC RESULT``
(``torch.distributed.run``, the engine users already have: no home-made process management) and returns the rows
that rank 0 wrote. Each rank runs ``main``: it forms the process group (``init_process_group``: gloo on the CPU, one
torch thread per rank; NCCL on CUDA, one GPU per rank, ``LOCAL_RANK``), measures the spec's cases, and rank 0 writes
one row per case. The process group lives in the ranks' measuring processes, so a launch that failed leaves nothing
behind: the next one forms a fresh group on every rank.

**Data-parallel steps** (``measure_steps``, spec kind ``steps``): every case of a spec is one objective of one model
at one world size N and scaling. Each rank builds the model and the whole seeded batch x (``bench.step_case``) and
takes its slice, wraps ``RecipeLoss`` (the recipe's loss as the module's forward) in ``DistributedDataParallel``, and
runs the same recipes and ``fdsm.training.training_step`` as ``train-steps``. Strong scaling keeps the global batch
B (B/N per rank), weak scaling keeps B per rank (N B in all); at N = 1 the two are one run.
Per objective two steppers are timed, round by round and interleaved with every other objective's: the DDP step,
and the same step under ``no_sync()`` (no gradient all-reduce; a twin model, since its ranks' updates diverge).
Before each timed step a barrier lines the ranks up; each rank times its own step; the step's time is the slowest
rank's (an all-reduce MAX of the per-rank times, after the rounds). The columns:

================== =================================================================================================
time_ms            median synchronized time of the DDP step (with its IQR and quartiles)
time_compute_ms    median synchronized time of the same step under ``no_sync()``: no gradient communication
comm_exposed_ms    **exposed** communication: the median over rounds of (DDP step - no_sync step), what the
                   all-reduce adds to the step's wall time after its overlap with the backward (and DDP's bucketing)
comm_allreduce_ms  **total** all-reduce time: per step, the union of the spans from each bucket's all-reduce launch
                   to its completion, timed by a DDP comm hook (``AllReduceTimer``), the slowest rank's; it overlaps
                   the backward, so it can exceed the exposed time; it includes the wait for the slowest rank
grad_mb            the gradient bytes each rank all-reduces per step, in MiB (``buckets``: how many all-reduces)
speedup            an FD (or Taylor) row's counterpart DDP step time / its own, median of the per-round ratios
peak_mem_mb        peak memory of one DDP step above the rank's baseline, the largest over the ranks
                   (``peak_mem_mb_min``: the smallest)
loss               the global batch's loss of the first step: the mean over ranks of the ranks' losses
================== =================================================================================================

NOTE [global-batch draws]
A data-parallel step must equal one process's step on the whole batch: the same v, noise xi and per-sample sigma
for every sample, whichever rank holds it. The recipes draw them inside the loss, for the batch they are given
(``torch.randn_like(x)``, ``torch.randn(x.shape)`` in ``draw_directions``, ``torch.randint`` in ``draw_levels``,
``torch.rand`` for the VAE score net's images, and ``deep_ebm_sigmas(len(x))``, a linspace over the batch's slots).
``global_batch_draws`` runs the loss with those functions replaced: a draw whose leading size is the rank's batch b
is made for the global batch (N b, ...) and the rank takes its slice b r .. b (r + 1). Every rank starts from the
same seed and draws the same global tensors in the same order, so the RNG streams stay equal across ranks and equal
to the single process's. A draw of another leading size is left alone (drawn alike on every rank).

Data-parallel meaning by recipe: the batch mean of per-sample terms is exactly the mean over ranks of the ranks'
means (equal shares: B divisible by N), which DDP's gradient average gives. Two rows are not per-sample:

- **DKEF** (table 1): its loss solves the kernel weights alpha on the first half of its batch (a linear solve over
  those rows) and scores the second half. Data-parallel, each rank solves its own alpha on its own half-slice:
  another estimator (N solves on B / 2N rows each), not the single-process step; and the halves are the ranks'
  halves, not the global batch's. Its step is measured, but it is not the same update.
- **deep EBM DSM / FD-DSM**: sigma = linspace(0.05, 1.2, B) over the batch's slots; with the global-batch draws each
  rank takes its slots' levels, so the step is the single-process one (a plain per-rank linspace would not be).

Run a rank's entry directly for a multi-node job (docs/gpu.md): ``torchrun ... -m bench.distributed_case SPEC RESULT``.
Test-only: ``FDSM_DISTRIBUTED_FAULT=raise:R`` (or ``hang:R``) makes rank R raise (or sleep) once its process group
is up, before the first collective (``tests/test_distributed.py``).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import functools
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

import fdsm.objectives
from bench.config import DTYPES
from bench.derivative_case import build_model
from bench.memory import MB, peak_memory
from bench.step_case import COUNTERPART, STRONGEST, build_row, recipe_for
from fdsm import central_stencil, directional_derivative
from fdsm.distributed import all_reduce, points_of
from fdsm.fd import apply_stencil, stencil_outputs
from fdsm.models.casting import to_dtype
from fdsm.recipes import Recipe
from fdsm.stencils import Stencil
from fdsm.training import make_optimizer, training_step

FAULT_ENV = "FDSM_DISTRIBUTED_FAULT"  # test-only (module docstring)
_PHASE = ["starting"]  # what this rank is doing, for its error message (``phase``)
ERROR_SUFFIX = ".rank{rank}.error"  # beside RESULT: what rank r raised, for the launcher's message


# ---- the process group --------------------------------------------------------------------------------------------

def init_process_group(device: str, timeout_s: float) -> tuple[torch.device, str]:
    """Form the default process group of a ``torchrun`` rank and return (this rank's device, backend).

    gloo on the CPU, NCCL on CUDA with one GPU per rank (``cuda:LOCAL_RANK``). ``timeout_s`` bounds the set-up and
    every collective (gloo's default is 30 minutes): a rank that died or hung makes the others raise, not hang.
    """
    if not dist.is_available():
        raise RuntimeError("init_process_group: this torch is built without torch.distributed; use a build with it")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError("init_process_group: expected the RANK and WORLD_SIZE of a torchrun rank in the "
                           "environment; launch with torchrun --nproc-per-node N -m bench.distributed_case ...")
    where = torch.device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    if where.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"init_process_group: LOCAL_RANK {local} has no GPU ({torch.cuda.device_count()} "
                               "visible); run at most one rank per GPU (--nproc-per-node)")
        where = torch.device("cuda", local)
        torch.cuda.set_device(where)
        dist.init_process_group("nccl", timeout=timeout, device_id=where)
        return where, "nccl"
    dist.init_process_group("gloo", timeout=timeout)
    return where, "gloo"


def phase(what: str) -> None:
    """Say what this rank does now: a rank that fails names it, e.g. a collective inside DDP's constructor."""
    _PHASE[0] = what


def barrier(device: torch.device, what: str) -> None:
    """All ranks meet here (an all-reduce of one number, which gloo and NCCL both time out)."""
    all_reduce(torch.zeros(1, device=device), what=f"the barrier {what}", who="bench.distributed_case")
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inject_fault(rank: int) -> None:
    """Test-only (module docstring): ``FDSM_DISTRIBUTED_FAULT=raise:R`` / ``hang:R``."""
    fault = os.environ.get(FAULT_ENV, "")
    if not fault:
        return
    kind, _, who = fault.partition(":")
    if int(who) != rank:
        return
    if kind == "raise":
        raise RuntimeError(f"injected fault ({FAULT_ENV}={fault}): rank {rank} raises before its first collective")
    if kind == "hang":
        time.sleep(3600)


# ---- global-batch draws -------------------------------------------------------------------------------------------

def _sized(shape: Sequence[int], local: int, world: int) -> tuple[tuple[int, ...], bool]:
    """The global shape of a draw of ``shape`` and whether it is a batch draw (leading size ``local``)."""
    shape = tuple(int(n) for n in shape)
    if shape and shape[0] == local:
        return (world * local, *shape[1:]), True
    return shape, False


@contextlib.contextmanager
def global_batch_draws(rank: int, world: int, local: int) -> Iterator[None]:
    """Inside the block, a random draw of leading size ``local`` (this rank's batch) is made for the global batch
    and this rank's slice is returned (NOTE [global-batch draws]); ``fdsm.objectives.deep_ebm_sigmas`` likewise.
    Nothing changes at world size 1."""
    if world == 1:
        yield
        return
    mine = slice(rank * local, (rank + 1) * local)
    originals = {name: getattr(torch, name) for name in ("randn", "rand", "randint", "randn_like", "rand_like")}
    sigmas = fdsm.objectives.deep_ebm_sigmas

    def sized_draw(name: str) -> Callable[..., Tensor]:
        draw = originals[name]

        def wrapped(*args, **kwargs):
            if "size" in kwargs:
                shape, batch = _sized(kwargs["size"], local, world)
                return draw(*args, **{**kwargs, "size": shape})[mine] if batch else draw(*args, **kwargs)
            if name == "randint":  # randint(high, size) or randint(low, high, size)
                *bounds, size = args
                shape, batch = _sized(size, local, world)
                return draw(*bounds, shape, **kwargs)[mine] if batch else draw(*args, **kwargs)
            size = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
            shape, batch = _sized(size, local, world)
            return draw(shape, **kwargs)[mine] if batch else draw(*args, **kwargs)

        return wrapped

    def like_draw(name: str) -> Callable[..., Tensor]:
        draw = originals[name]

        def wrapped(t: Tensor, **kwargs):
            shape, batch = _sized(t.shape, local, world)
            if not batch:
                return draw(t, **kwargs)
            template = t.new_empty(shape)  # the global batch's, in t's layout: randn_like fills it in memory order
            if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
                template = template.contiguous(memory_format=torch.channels_last)
            return draw(template, **kwargs)[mine]

        return wrapped

    def global_sigmas(batch: int, *args, **kwargs) -> Tensor:
        return sigmas(world * batch, *args, **kwargs)[mine] if batch == local else sigmas(batch, *args, **kwargs)

    try:
        for name in ("randn", "rand", "randint"):
            setattr(torch, name, sized_draw(name))
        for name in ("randn_like", "rand_like"):
            setattr(torch, name, like_draw(name))
        fdsm.objectives.deep_ebm_sigmas = global_sigmas
        yield
    finally:
        for name, draw in originals.items():
            setattr(torch, name, draw)
        fdsm.objectives.deep_ebm_sigmas = sigmas


class RecipeLoss(nn.Module):
    """A recipe's loss as a module's forward, so that ``DistributedDataParallel`` sees one forward per step (its
    hooks need it) whatever the loss calls (``log_density``, ``score``, nested autograd, Taylor mode):
    x: (b, *event), this rank's slice -> the 0-d loss of this rank's share (NOTE [global-batch draws])."""

    def __init__(self, model: nn.Module, recipe: Recipe, rank: int, world: int):
        super().__init__()
        self.model, self.recipe, self.rank, self.world = model, recipe, rank, world

    def forward(self, x: Tensor) -> Tensor:
        with global_batch_draws(self.rank, self.world, len(x)):
            return self.recipe.loss(self.model, x)


# ---- communication time: a DDP comm hook ---------------------------------------------------------------------------

class AllReduceTimer:
    """The state of ``timed_allreduce``: per step, the spans from each bucket's all-reduce launch to its completion.
    On CUDA the ends are events recorded on the stream the completion callback runs on (read after a sync)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.spans: list[tuple[Any, Any]] = []
        self.buckets = 0
        self.numel = 0

    def _stamp(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start_step(self) -> None:
        self.spans = []
        self.buckets = self.numel = 0

    def step_ms(self) -> float:
        """The union of this step's all-reduce spans, in ms (0 when there was none: a no_sync step)."""
        if not self.spans:
            return 0.0
        if self.cuda:
            origin = self.spans[0][0]
            spans = sorted((origin.elapsed_time(a), origin.elapsed_time(b)) for a, b in self.spans)
        else:
            spans = sorted((a * 1e3, b * 1e3) for a, b in self.spans)
        total, (low, high) = 0.0, spans[0]
        for a, b in spans[1:]:
            if a > high:
                total, low = total + high - low, a
            high = max(high, b)
        return total + high - low


def timed_allreduce(state: AllReduceTimer, bucket):  # unannotated: DDP checks real annotations, not strings
    """DDP's default all-reduce (average over the ranks) of a ``dist.GradBucket``, with its span recorded in
    ``state``; returns DDP's ``torch.futures.Future[Tensor]``."""
    start = state._stamp()
    state.buckets += 1
    state.numel += bucket.buffer().numel()

    def done(fut: torch.futures.Future[Tensor]) -> Tensor:
        state.spans.append((start, state._stamp()))
        return fut.value()

    return default_hooks.allreduce_hook(None, bucket).then(done)


# ---- data-parallel steps ------------------------------------------------------------------------------------------

def _unused_parameters(module: nn.Module, x: Tensor) -> list[str]:
    """The trainable parameters that one local backward of ``module(x)`` leaves without a gradient.

    DDP needs to know them (``find_unused_parameters``, a graph walk after every forward, only where needed): the
    exact sliced objectives differentiate grad_x log p, to which a constant offset of log p (the deep EBM's head
    bias b_3) contributes nothing, so its gradient is None, while in FD it cancels to zero. The trial step's
    draws are made alike on every rank, so the ranks' RNG streams stay equal.
    """
    module(x).backward()
    unused = [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None]
    module.zero_grad(set_to_none=True)
    return unused


class DataParallelStepper:
    """One objective's model, replicated on every rank and wrapped in ``DistributedDataParallel``; ``stepper()``
    takes one complete training step on this rank's slice of the batch (``sync=False``: under ``no_sync()``)."""

    def __init__(self, recipe: Recipe, case: Mapping[str, Any], device: torch.device, *, sync: bool = True):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.recipe, self.case, self.sync, self.device = recipe, case, sync, device
        model, x = build_row(recipe, case, device=device)  # the whole batch: (B_global, *event), the same everywhere
        b = len(x) // self.world
        if b * self.world != len(x):
            raise ValueError(f"DataParallelStepper: expected the global batch {len(x)} to split evenly over "
                             f"{self.world} ranks; choose --batch divisible by the world size")
        self.x = x[self.rank * b:(self.rank + 1) * b]  # (b, *event): this rank's slice
        self.model = model
        module = RecipeLoss(model, recipe, self.rank, self.world)
        self.unused = _unused_parameters(module, self.x)
        self.ddp = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                           broadcast_buffers=False,  # the buffers (noise levels) are constants
                                           find_unused_parameters=bool(self.unused))
        self.timer = AllReduceTimer(device)
        self.ddp.register_comm_hook(self.timer, timed_allreduce)
        self.optimizer, self.scheduler = make_optimizer(model, recipe.optim, total_steps=10**6)
        self.losses: list[Tensor] = []

    def __call__(self) -> None:
        self.timer.start_step()
        with contextlib.nullcontext() if self.sync else self.ddp.no_sync():
            loss = training_step(self.ddp, lambda: self.ddp(self.x), self.optimizer, clip=self.recipe.optim.clip,
                                 scheduler=self.scheduler, step=len(self.losses) + 1)
        self.losses.append(loss)


def time_synchronized(calls: Sequence[Callable[[], object]], device: torch.device, *, warmup: int, repeats: int,
                      timers: Sequence[AllReduceTimer | None] = ()) -> tuple[Tensor, Tensor]:
    """Every call once per round, in list order on even rounds and reversed on odd ones, each after a barrier and
    timed on each rank; returns (times, comm): (len(calls), repeats) in ms, each the slowest rank's (all-reduce
    MAX after the rounds). ``comm`` holds each call's ``timers`` reading (0 without a timer)."""
    for _ in range(warmup):
        for call in calls:
            barrier(device, "before a warm-up step")
            call()
    times = torch.zeros(len(calls), repeats, dtype=torch.float64)
    comm = torch.zeros(len(calls), repeats, dtype=torch.float64)
    for r in range(repeats):
        for i in (range(len(calls)) if r % 2 == 0 else reversed(range(len(calls)))):
            barrier(device, "before a timed step")
            start = time.perf_counter()
            calls[i]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[i, r] = (time.perf_counter() - start) * 1e3
            timer = timers[i] if i < len(timers) else None
            comm[i, r] = timer.step_ms() if timer is not None else 0.0
    both = torch.stack([times, comm]).to(device)
    all_reduce(both, what="the per-rank step times", who="bench.distributed_case", op=dist.ReduceOp.MAX)
    return both[0].cpu(), both[1].cpu()


def _check_world(cases: Sequence[Mapping[str, Any]]) -> None:
    """Every case's ``world_size`` is the group's: a launcher that started another number of ranks is refused."""
    world = dist.get_world_size()
    asked = sorted({int(c["world_size"]) for c in cases if "world_size" in c})
    if asked and asked != [world]:
        raise ValueError(f"bench.distributed_case: the cases ask for world size {', '.join(map(str, asked))}, but "
                         f"the launcher started {world} ranks; make it start --world-sizes ranks in all (nodes x "
                         "processes per node)")


def _quartiles(samples: Sequence[float]) -> tuple[float, float, float]:
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q1, q2, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, q2, q3


def _time_columns(samples: Sequence[float], prefix: str = "time") -> dict[str, float]:
    q1, median, q3 = _quartiles(list(samples))
    return {f"{prefix}_ms": median, f"{prefix}_ms_iqr": q3 - q1, f"{prefix}_ms_q1": q1, f"{prefix}_ms_q3": q3}


def _across_ranks(value: float, device: torch.device, op: dist.ReduceOp.RedOpType, what: str) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    return all_reduce(t, what=what, who="bench.distributed_case", op=op).item()


def _ratio(numerator: Tensor, denominator: Tensor) -> dict[str, float]:
    q1, median, q3 = _quartiles((numerator / denominator).tolist())
    return {"median": median, "q1": q1, "q3": q3}


def measure_steps(cases: Sequence[Mapping[str, Any]], device: torch.device, backend: str) -> list[dict[str, Any]]:
    """The rows of one launch's cases: every objective of one model at one (world size, scaling), timed side by
    side (module docstring)."""
    _check_world(cases)
    world = dist.get_world_size()
    objectives = [c["objective"] for c in cases]
    first = cases[0]
    phase(f"building the DDP models of {first['model']} ({', '.join(objectives)}); DDP's constructor broadcasts "
          "the parameters")
    synced = [DataParallelStepper(recipe_for(c), c, device) for c in cases]
    quiet = [DataParallelStepper(recipe_for(c), c, device, sync=False) for c in cases]
    phase(f"timing the steps of {', '.join(objectives)}")
    times, comm = time_synchronized([*synced, *quiet], device, warmup=int(first["warmup"]),
                                    repeats=int(first["repeats"]), timers=[s.timer for s in synced])
    del quiet  # their models and optimizer states leave before the memory probes
    rows = []
    for i, (case, step) in enumerate(zip(cases, synced, strict=True)):
        t, t_quiet = times[i], times[len(cases) + i]
        row = {**_time_columns(t.tolist()), "repeats": int(case["repeats"]),
               "time_compute_ms": _quartiles(t_quiet.tolist())[1],
               "comm_exposed_ms": _quartiles((t - t_quiet).tolist())[1],
               "comm_allreduce_ms": _quartiles(comm[i].tolist())[1],
               "grad_mb": step.timer.numel * step.x.element_size() / MB if world > 1 else 0.0,
               "buckets": step.timer.buckets, "batch_per_rank": len(step.x), "world_size": world,
               "unused_params": len(step.unused),
               "backend": backend, "threads": torch.get_num_threads(), "table": step.recipe.table,
               "optimizer": step.recipe.optim.name, "lr": step.recipe.optim.lr}
        for suffix, table in (("", COUNTERPART), ("_taylor", STRONGEST)):
            versus = table.get(case["objective"])
            if versus in objectives:
                ratio = _ratio(times[objectives.index(versus)], t)
                row |= {f"versus{suffix}": versus, f"speedup{suffix}": ratio["median"],
                        f"speedup{suffix}_q1": ratio["q1"], f"speedup{suffix}_q3": ratio["q3"]}
        rows.append(row)
    for row, step in zip(rows, synced, strict=True):  # one objective at a time, on every rank together
        phase(f"probing the peak memory of {step.case['objective']}")
        step.timer.start_step()
        peak = peak_memory(step, device).peak_mb
        row["peak_mem_mb"] = _across_ranks(peak, device, dist.ReduceOp.MAX, "the peak memory")
        row["peak_mem_mb_min"] = _across_ranks(peak, device, dist.ReduceOp.MIN, "the peak memory")
        row["loss"] = _across_ranks(step.losses[0].item(), device, dist.ReduceOp.SUM, "the losses") / world
    return rows


# ---- stencil-parallel FD: fd-distributed against fd-batched -------------------------------------------------------

def stencil_problem(case: Mapping[str, Any], device: torch.device) -> tuple[Callable[[Tensor], Tensor], Tensor, Tensor]:
    """(f, x, v) of a derivative case, as the derivatives sweep draws them (``bench.derivative_case``): the seeded
    model's log-density, x uniform in [0, 1] and v = eps u with u uniform on the unit sphere, (B, *event), in the
    case's dtype on ``device``; the same on every rank."""
    model = to_dtype(build_model({**case, "device": str(device)}), DTYPES[case["dtype"]])
    g = torch.Generator().manual_seed(int(case["seed"]))
    event = tuple(model.event_shape)
    x = torch.rand(int(case["batch"]), *event, generator=g, dtype=torch.float64)  # (B, *event)
    u = torch.randn(int(case["batch"]), *event, generator=g, dtype=torch.float64)
    u = u / u.flatten(1).norm(dim=1).view(-1, *([1] * len(event)))  # unit norm per sample
    dtype = DTYPES[case["dtype"]]
    return model.log_density, x.to(device, dtype), (float(case["eps"]) * u).to(device, dtype)


def measure_stencil(cases: Sequence[Mapping[str, Any]], device: torch.device, backend: str) -> list[dict[str, Any]]:
    r"""The rows of one launch's derivative cases (methods ``fd-batched`` and ``fd-distributed``, the central stencil
    of accuracy 2): per order T, the methods timed side by side on every rank, each call's time the slowest rank's,
    with the graph kept as the derivatives sweep keeps it. ``fd-batched`` runs the whole stencil on rank 0 while
    the other ranks idle: the one-device baseline, timed in the same launch on the same loaded machine.

    ``rel_diff`` (fd-distributed rows): :math:`\max_b |D_{dist} - D_{batched}| / \sum_i |w_i f_i|`, against the
    stencil sum's roundoff scale (FD cancels, so |D| is not the scale); ``speedup``: fd-batched's time over
    fd-distributed's, the median of the per-round ratios."""
    _check_world(cases)
    world, rank = dist.get_world_size(), dist.get_rank()
    rows: dict[int, dict[str, Any]] = {}
    for order in dict.fromkeys(int(c["order"]) for c in cases):
        mine = [(i, c) for i, c in enumerate(cases) if int(c["order"]) == order]
        first = mine[0][1]
        phase(f"timing the derivatives of order {order}")
        f, x, v = stencil_problem(first, device)
        stencil = central_stencil(order)
        # fd-batched is one device's latency: rank 0 computes, the others wait at the next barrier (idle, as the
        # devices a one-device method leaves unused); fd-distributed runs on every rank
        calls = [functools.partial(directional_derivative, f, x, v, order, method=c["method"])
                 if c["method"] == "fd-distributed" or rank == 0 else _idle for _, c in mine]
        times, _ = time_synchronized(calls, device, warmup=int(first["warmup"]), repeats=int(first["repeats"]))
        methods = [c["method"] for _, c in mine]
        for k, (i, case) in enumerate(mine):
            outputs: list[Tensor] = []
            peak = peak_memory(lambda call=calls[k], kept=outputs: kept.append(call()), device).peak_mb
            row = {**_time_columns(times[k].tolist()), "repeats": int(case["repeats"]),
                   "peak_mem_mb": _across_ranks(peak, device, dist.ReduceOp.MAX, "the peak memory"),
                   "world_size": world, "backend": backend, "threads": torch.get_num_threads(),
                   "points": len(stencil), **_stencil_shares(case["method"], world, len(stencil))}
            if case["method"] == "fd-distributed" and "fd-batched" in methods:
                j = methods.index("fd-batched")
                ratio = _ratio(times[j], times[k])
                row |= {"versus": "fd-batched", "speedup": ratio["median"], "speedup_q1": ratio["q1"],
                        "speedup_q3": ratio["q3"]}
                if rank == 0:  # local work only: no collective
                    row["rel_diff"] = _rel_diff(outputs[0].detach(), f, x, v, stencil)
            rows[i] = row
    return [rows[i] for i in range(len(cases))]


def _stencil_shares(method: str, world: int, points: int) -> dict[str, int]:
    """``points_per_rank`` (the most stencil points one rank evaluates) and ``ranks_busy`` (the ranks that evaluate
    any) of a ``measure_stencil`` row: fd-distributed deals the S points over the N ranks (``points_of``: rank 0
    holds ceil(S / N), and min(N, S) ranks hold some); fd-batched evaluates all S on rank 0 alone."""
    if method == "fd-distributed":
        return {"points_per_rank": len(points_of(0, world, points)), "ranks_busy": min(world, points)}
    return {"points_per_rank": points, "ranks_busy": 1}


def _idle() -> None:
    """A rank's part in a one-device call: nothing (``measure_stencil``)."""


def _rel_diff(d: Tensor, f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, stencil: Stencil) -> float:
    """``rel_diff`` of ``measure_stencil``: max_b |D - D_batched| / sum_i |w_i f_i(x_b)|."""
    with torch.no_grad():
        outputs = stencil_outputs(f, x, v, stencil)  # (S, B): f at every point
        reference = apply_stencil(outputs, stencil)  # fd-batched's D: (B,)
        w = torch.tensor(stencil.weights, dtype=torch.float64, device=x.device).view(-1, 1)  # (S, 1)
        scale = (w * outputs.double()).abs().sum(0)  # (B,)
    return ((d.double() - reference.double()).abs() / scale).max().item()


# ---- the rank's entry ---------------------------------------------------------------------------------------------

MEASURES = {"steps": measure_steps, "stencil": measure_stencil}


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, default=float))
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    """A rank: ``python -m bench.distributed_case SPEC RESULT`` under torchrun (module docstring). SPEC is a JSON
    file ``{"kind": "steps" | "stencil", "device": ..., "threads": n, "collective_timeout_s": s, "cases": [...]}``;
    rank 0 writes ``{"rows": [...]}`` (one per case, in order) to RESULT; a rank that raises writes its error to
    RESULT + ``.rank<r>.error`` and exits with status 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print("usage: torchrun --nproc-per-node N -m bench.distributed_case SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec, result = json.loads(Path(argv[0]).read_text()), Path(argv[1])
    rank = int(os.environ.get("RANK", 0))
    try:
        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        from bench.environment import prepare_process

        prepare_process()
        phase("forming the process group")
        device, backend = init_process_group(spec["device"], float(spec["collective_timeout_s"]))
        _inject_fault(rank)
        phase(f"starting the {len(spec['cases'])} {spec['kind']} case(s)")
        rows = MEASURES[spec["kind"]](spec["cases"], device, backend)
        if rank == 0:
            _write_json(result, {"rows": rows})
    except BaseException as err:
        text = " ".join(str(err).split())
        world = os.environ.get("WORLD_SIZE", "?")
        message = f"rank {rank} of {world}, while {_PHASE[0]}: {type(err).__name__}: {text[:600]}"
        if isinstance(err, dist.DistError) or any(w in text for w in ("Timed out", "Connection closed", "gloo")):
            message += (f" (a collective failed: another rank died, raised or hung; the process-group timeout is "
                        f"{float(spec['collective_timeout_s']):g} s)")
        Path(str(result) + ERROR_SUFFIX.format(rank=rank)).write_text(
            json.dumps({"message": message, "time": time.time(), "traceback": traceback.format_exc()}))
        print(message, file=sys.stderr, flush=True)
        return 1
    finally:
        if dist.is_available() and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    return 0


# ---- the launcher (the sweep's side) ------------------------------------------------------------------------------

class LaunchFailed(Exception):
    """A launch that gave no rows: ``status`` is ``timeout`` or ``error``, the message says which rank and why."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _term_with_parent() -> None:  # in the torchrun child, before exec: SIGTERM when the sweep process dies
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to torchrun's process group (torchrun passes it to its ranks), SIGKILL after ``grace_s``."""
    for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        try:
            process.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _rank_errors(result: Path) -> list[str]:
    """The ranks' error messages, the earliest first (the root cause; the others are mostly its echo)."""
    found = []
    for path in result.parent.glob(result.name + ".rank*.error"):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text())
            found.append((record["time"], record["message"]))
    return [message for _, message in sorted(found)]


def launch(spec: Mapping[str, Any], world_size: int, *, timeout_s: float, log: Path | None = None,
           launcher: str = "", folder: Path | None = None) -> list[dict[str, Any]]:
    """Run ``spec`` on ``world_size`` ranks of one node under torchrun and return rank 0's rows.

    ``launcher``, when given, replaces ``python -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node N
    --max-restarts 0``: a command prefix that starts ``world_size`` ranks, e.g. ``srun ... torchrun --nnodes 2
    ... --rdzv-endpoint HOST:PORT`` (docs/gpu.md); SPEC and RESULT are then written under ``folder`` (default: a
    temporary folder), which must be on a filesystem every node shares.

    Raises ``LaunchFailed("timeout", ...)`` when the launch runs past ``timeout_s`` (it is stopped: SIGTERM to
    torchrun and its ranks, then SIGKILL), ``LaunchFailed("error", ...)`` when a rank raised or died (the message
    is the earliest rank's error, then torchrun's last lines). Ctrl-C or SIGTERM of the sweep stops the launch the
    same way before it propagates. ``log``: torchrun's and the ranks' output is appended there.
    """
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fdsm-launch-", dir=folder) as where:
        spec_path, result = Path(where) / "spec.json", Path(where) / "result.json"
        spec_path.write_text(json.dumps(spec))
        prefix = shlex.split(launcher) if launcher else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node",
            str(world_size), "--max-restarts", "0"]
        command = [*prefix, "-m", "bench.distributed_case", str(spec_path), str(result)]
        started = f"the launcher {launcher!r}" if launcher else f"torchrun --nproc-per-node {world_size}"
        env = {**os.environ, "OMP_NUM_THREADS": str(spec.get("threads") or os.environ.get("OMP_NUM_THREADS", 1)),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                           os.environ.get("PYTHONPATH")]))}
        output = open(log, "a") if log is not None else tempfile.TemporaryFile("w+")  # noqa: SIM115
        with output:
            start = time.perf_counter()
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True, preexec_fn=_term_with_parent)
            try:
                code = process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _stop(process)
                errors = _rank_errors(result)
                raise LaunchFailed("timeout", f"{started} ran past {timeout_s:g} s and "
                                   "was stopped (a rank hung, or the case is too slow for --timeout)"
                                   + (f"; {errors[0]}" if errors else "")) from None
            except BaseException:  # Ctrl-C / SIGTERM of the sweep: stop the ranks, keep the rows written so far
                _stop(process)
                raise
            wall_s = time.perf_counter() - start
            if code != 0 or not result.is_file():
                errors = _rank_errors(result)
                output.flush()
                tail = ""
                if log is None:
                    output.seek(0)
                    tail = " | ".join(line.strip() for line in output.read().splitlines()[-3:])
                what = errors[0] if errors else f"no rank left an error (torchrun: {tail or 'see the log'})"
                raise LaunchFailed("error", f"{started} exited with status {code} "
                                   f"after {wall_s:.1f} s; {what}")
        rows = json.loads(result.read_text())["rows"]
    for row in rows:
        row["launch_s"] = wall_s
    return rows


if __name__ == "__main__":
    sys.exit(main())
