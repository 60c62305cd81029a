r"""``fdsm-bench kernels``: each fused Triton kernel against its torch reference, in GB/s against a device copy.

For every kernel of ``kernels`` (perturb, combine, and the FD-SSM, FD-DSM, FD-SSMVR loss heads), every input size
and both passes (``fwd``; ``fwd+bwd``, the forward then ``backward`` of a fixed upstream gradient), the fused
kernel (``impl=triton``) and its torch reference (``impl=torch``, the same function the tests use as the oracle)
are timed with ``triton.testing.do_bench``: warm-up and timed budgets in milliseconds, CUDA events, the L2 cache
flushed before every repetition, gradients reset between repetitions; the median and the 20th/80th percentiles
are reported. The sizes are the bytes of the forward's inputs, in MiB (2^20 bytes); the largest exceed the L2.

Achieved bandwidth uses the same byte count for both implementations: the minimum traffic of the fused kernels
(every input read once, every output written once; see ``kernels/stencil.py`` and ``kernels/loss_heads.py``),

.. math::
    \mathrm{GB/s} = \frac{\text{bytes moved}}{10^9 \cdot t}, \qquad
    \text{frac\_of\_copy} = \frac{\mathrm{GB/s}}{\mathrm{GB/s}_\text{copy}},

so for the reference it is an *effective* bandwidth (it moves more bytes than that). The copy bandwidth is a
device-to-device ``dst.copy_(src)`` of the same size, measured by the same ``do_bench`` in the same run (its own
``kernel=copy`` rows; it reads and writes ``size`` bytes, 2 x size moved). Each triton row carries ``rel_error``
against the reference (max |a - b| / max |b| over the output and, for fwd+bwd, every input gradient); beyond the
dtype's tolerance the row's status is ``error``, timed all the same.

Writes ``kernels.csv`` (resumable, one row per (kernel, impl, pass, size_mb, dtype, device, seed)). On a machine
where the kernels cannot be timed (no CUDA device, or no Triton) every row is written with status
``unsupported`` and the reason, and no number.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor

import kernels
from bench.config import DTYPES, Shared, option, positive, positives, some_of
from bench.experiment import Experiment

KEYS = ("kernel", "impl", "pass", "size_mb", "dtype", "device", "seed")
COLUMNS = ("time_ms", "time_ms_q20", "time_ms_q80", "gb_per_s", "copy_gb_per_s", "frac_of_copy", "bytes_moved",
           "shape", "rel_error", "status")
MIB = 2**20
QUANTILES = (0.5, 0.2, 0.8)  # median first, then the 20th and 80th percentiles
# rel_error beyond which a triton row is an error: float32 roundoff in a different order, a few hundred ulps.
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}
NARROW_TOLERANCE = 1e-2  # float16 / bfloat16

N_EVENT = 3 * 32 * 32  # row length n of the (B, n) kernels: one CIFAR-10 image
STENCIL = {"offsets": (-1.0, 0.0, 1.0), "weights": (1.0, -2.0, 1.0)}  # central, second order: S = 3
S = len(STENCIL["offsets"])


# ---- what is measured: one declaration per kernel ----------------------------------------------------------------

@dataclass(frozen=True)
class KernelBench:
    """One fused op in the sweep.

    ``make(size_bytes, dtype, device)`` gives the op's tensor inputs (about ``size_bytes`` of them) and its other
    arguments; the first ``n_grad`` inputs get gradients in the fwd+bwd pass. ``traffic(inputs)`` gives the
    elements the fused kernels must move, (forward, backward).
    """

    op: Callable[..., Tensor]
    make: Callable[[int, torch.dtype, torch.device], tuple[list[Tensor], dict[str, Any]]]
    n_grad: int
    traffic: Callable[[list[Tensor]], tuple[int, int]]


def _randn(device: torch.device, dtype: torch.dtype, *shape: int) -> Tensor:
    return torch.randn(*shape, device=device, dtype=dtype)


def _rows(size: int, dtype: torch.dtype, tensors: int, row: int = 1) -> int:
    """How many rows of ``row`` elements make ``tensors`` tensors of ``size`` bytes together (at least one)."""
    return max(1, size // (tensors * row * dtype.itemsize))


BENCHES: dict[str, KernelBench] = {
    # x, v (B, n) -> (S*B, n). fwd: read 2N, write S N. bwd: read S N, write 2N.
    "perturb": KernelBench(
        kernels.perturb,
        lambda size, dt, dev: ([_randn(dev, dt, b := _rows(size, dt, 2, N_EVENT), N_EVENT),
                                _randn(dev, dt, b, N_EVENT)], {"offsets": STENCIL["offsets"]}),
        n_grad=2,
        traffic=lambda t: ((2 + S) * t[0].numel(), (S + 2) * t[0].numel()),
    ),
    # F (S, B, n) -> (B, n). fwd: read S N, write N. bwd: read N, write S N.
    "combine": KernelBench(
        kernels.combine,
        lambda size, dt, dev: ([_randn(dev, dt, S, _rows(size, dt, S, N_EVENT), N_EVENT)],
                               {"weights": STENCIL["weights"]}),
        n_grad=1,
        traffic=lambda t: (t[0].numel() + t[0][0].numel(), t[0][0].numel() + t[0].numel()),
    ),
    # a, b, c (B,) -> (B,). fwd: read 3B, write B. bwd: read a, b and the upstream gradient, write 3B.
    "fd_ssm": KernelBench(
        kernels.fd_ssm_head,
        lambda size, dt, dev: ([_randn(dev, dt, b := _rows(size, dt, 3)), _randn(dev, dt, b), _randn(dev, dt, b)],
                               {"scale": 100.0}),
        n_grad=3,
        traffic=lambda t: (4 * t[0].numel(), 6 * t[0].numel()),
    ),
    # a, b, t, sigma (B,) -> (B,). fwd: read 4B, write B. bwd: read 4B and the upstream gradient, write 3B.
    "fd_dsm": KernelBench(
        kernels.fd_dsm_head,
        lambda size, dt, dev: ([_randn(dev, dt, b := _rows(size, dt, 4)), _randn(dev, dt, b), _randn(dev, dt, b),
                                0.05 + torch.rand(b, device=dev, dtype=dt)], {"scale": 25.0}),
        n_grad=3,
        traffic=lambda t: (5 * t[0].numel(), 8 * t[0].numel()),
    ),
    # s+, s-, v (B, n) -> (B,). fwd: read 3N, write B. bwd: read 3N and B, write 2N (v gets no gradient).
    "fd_ssmvr": KernelBench(
        kernels.fd_ssmvr_head,
        lambda size, dt, dev: ([_randn(dev, dt, b := _rows(size, dt, 3, N_EVENT), N_EVENT),
                                _randn(dev, dt, b, N_EVENT), _randn(dev, dt, b, N_EVENT)], {"eps": 0.1}),
        n_grad=2,
        traffic=lambda t: (3 * t[0].numel() + len(t[0]), 5 * t[0].numel() + len(t[0])),
    ),
}
IMPLS = ("triton", "torch")
PASSES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class KernelsConfig:
    kernels: tuple[str, ...] = option(tuple(BENCHES), "kernels", convert=some_of("--kernels", BENCHES))
    # MiB of forward inputs; 64 and up exceed the L2
    sizes_mb: tuple[float, ...] = option((1.0, 4.0, 16.0, 64.0, 256.0), "input sizes in MiB",
                                         convert=positives("--sizes-mb"))
    warmup_ms: float = option(25.0, "do_bench's warm-up budget per measurement", convert=positive("--warmup-ms"))
    rep_ms: float = option(100.0, "do_bench's timed budget per measurement (--repeats does not apply: do_bench "
                           "repeats by time)", convert=positive("--rep-ms"))


DEFAULT = KernelsConfig()
QUICK = dataclasses.replace(DEFAULT, sizes_mb=(4.0, 64.0), rep_ms=50.0)


# ---- one measurement ------------------------------------------------------------------------------------------

def unsupported_reason(device: torch.device) -> str | None:
    """Why the kernels cannot be timed on ``device`` (None when they can)."""
    if device.type != "cuda":
        return (f"timing needs CUDA (triton.testing.do_bench uses CUDA events), got device {device.type}; on the "
                "CPU the kernels run only under the Triton interpreter, a correctness tool (tests/test_kernels.py)")
    if not kernels.HAS_TRITON:
        return kernels.TRITON_IMPORT_ERROR
    return None


def _do_bench(fn: Callable[[], object], budget: tuple[float, float], grad_to_none: list[Tensor] | None
              ) -> list[float]:
    """``triton.testing.do_bench`` quantiles (ms), in the order of ``QUANTILES``; budget: (warm-up, timed) ms."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=budget[0], rep=budget[1], grad_to_none=grad_to_none,
                                   quantiles=list(QUANTILES))


@functools.cache
def _copy_timing(size: int, device: str, budget: tuple[float, float]) -> tuple[float, ...]:
    """do_bench quantiles of a device-to-device copy of ``size`` bytes (once per size, shared by its rows)."""
    src = torch.empty(size, dtype=torch.uint8, device=device).random_(0, 256)
    dst = torch.empty_like(src)
    return tuple(_do_bench(lambda: dst.copy_(src), budget, None))


def _rel_error(actual: list[Tensor], expected: list[Tensor]) -> float:
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(actual, expected, strict=True))


def _outputs(bench: KernelBench, inputs: list[Tensor], kwargs: dict, impl: str, upstream: Tensor | None):
    """The op's output and, given an upstream gradient, the gradients of its first ``n_grad`` inputs."""
    leaves = [t.detach().requires_grad_(upstream is not None and i < bench.n_grad) for i, t in enumerate(inputs)]
    out = bench.op(*leaves, backend=impl, **kwargs)
    if upstream is None:
        return [out.detach()]
    return [out.detach(), *torch.autograd.grad(out, leaves[:bench.n_grad], upstream)]


def measure(case: Mapping[str, Any]) -> dict[str, Any]:
    """One row: time, bandwidth and accuracy of one (kernel, impl, pass, size) on CUDA, or why it cannot run."""
    device, dtype = torch.device(case["device"]), DTYPES[case["dtype"]]
    if (reason := unsupported_reason(device)) is not None:
        return {"status": "unsupported", "message": reason}
    size = int(float(case["size_mb"]) * MIB)
    budget = (float(case["warmup_ms"]), float(case["rep_ms"]))
    copy = _copy_timing(size, str(device), budget)
    copy_gb_per_s = 2 * size / (copy[0] * 1e6)
    if case["kernel"] == "copy":
        timing, moved, shape, rel_error = copy, 2 * size, f"({size},) uint8", 0.0
    else:
        bench = BENCHES[case["kernel"]]
        torch.manual_seed(int(case["seed"]))
        inputs, kwargs = bench.make(size, dtype, device)
        backward = case["pass"] == "fwd+bwd"
        upstream = torch.randn_like(bench.op(*inputs, backend="torch", **kwargs)) if backward else None
        # Accuracy first: fast but wrong must show in the same row.
        rel_error = 0.0 if case["impl"] == "torch" else _rel_error(
            _outputs(bench, inputs, kwargs, case["impl"], upstream), _outputs(bench, inputs, kwargs, "torch", upstream))
        leaves = [t.requires_grad_(backward and i < bench.n_grad) for i, t in enumerate(inputs)]

        def fn() -> None:
            out = bench.op(*leaves, backend=case["impl"], **kwargs)
            if backward:
                out.backward(upstream)

        timing = _do_bench(fn, budget, leaves[:bench.n_grad] if backward else None)
        fwd_elems, bwd_elems = bench.traffic(inputs)
        moved = (fwd_elems + (bwd_elems if backward else 0)) * dtype.itemsize
        shape = " ".join(str(tuple(t.shape)) for t in inputs)
    gb_per_s = moved / (timing[0] * 1e6)  # bytes / (ms * 1e-3) / 1e9
    row = {"time_ms": timing[0], "time_ms_q20": timing[1], "time_ms_q80": timing[2], "gb_per_s": gb_per_s,
           "copy_gb_per_s": copy_gb_per_s, "frac_of_copy": gb_per_s / copy_gb_per_s, "bytes_moved": moved,
           "shape": shape, "rel_error": rel_error}
    tolerance = TOLERANCE.get(case["dtype"], NARROW_TOLERANCE)
    if not rel_error <= tolerance:  # a NaN output is an error too
        row.update(status="error", message=f"rel_error {rel_error:.2e} against the torch reference exceeds "
                                           f"{tolerance:.0e}")
    return row


# ---- the sweep and the summary ----------------------------------------------------------------------------------

def cases(config: KernelsConfig, shared: Shared) -> list[dict[str, Any]]:
    rows = []
    for size_mb in config.sizes_mb:
        common = {"size_mb": size_mb, "dtype": shared.dtype_name, "device": str(shared.device), "seed": shared.seed,
                  "warmup_ms": config.warmup_ms, "rep_ms": config.rep_ms}
        rows.append({"kernel": "copy", "impl": "torch", "pass": "fwd", **common})
        rows += [{"kernel": k, "impl": impl, "pass": p, **common}
                 for k in config.kernels for p in PASSES for impl in IMPLS]
    return rows


def bandwidth(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (kernel, pass, size, dtype, device): the fused GB/s and fraction of copy, and speed-up over torch."""
    ok = rows[(rows.status == "ok") & (rows.kernel != "copy")]
    wide = ok.pivot_table(index=["kernel", "pass", "size_mb", "dtype", "device"], columns="impl",
                          values=["time_ms", "gb_per_s", "frac_of_copy"])
    if wide.empty or ("time_ms", "triton") not in wide or ("time_ms", "torch") not in wide:
        return pd.DataFrame()
    return pd.DataFrame({"triton_gb_per_s": wide["gb_per_s", "triton"],
                         "triton_frac_of_copy": wide["frac_of_copy", "triton"],
                         "torch_frac_of_copy": wide["frac_of_copy", "torch"],
                         "speedup": wide["time_ms", "torch"] / wide["time_ms", "triton"]}).reset_index()


def targets(table: pd.DataFrame) -> list[str]:
    """The issue's targets, checked on this run: >= 70% of copy at >= 64 MiB; FD-SSMVR fwd+bwd >= 2x torch."""
    large = table[table.size_mb >= 64]
    if large.empty:
        return ["targets: no size >= 64 MiB measured"]
    lines = []
    for (kernel, pass_), part in large.groupby(["kernel", "pass"]):
        worst = part.triton_frac_of_copy.min()
        lines.append(f"{kernel} {pass_}: {worst:.0%} of copy at >= 64 MiB (target 70%): "
                     f"{'met' if worst >= 0.7 else 'NOT met'}")
    ssmvr = large[(large.kernel == "fd_ssmvr") & (large["pass"] == "fwd+bwd")]
    if len(ssmvr):
        worst = ssmvr.speedup.min()
        lines.append(f"fd_ssmvr fwd+bwd: {worst:.2f}x torch at >= 64 MiB (target 2x): "
                     f"{'met' if worst >= 2 else 'NOT met'}")
    return lines


def summary(rows: pd.DataFrame) -> str:
    table = bandwidth(rows)
    if not len(table):
        reasons = rows.loc[rows.status != "ok", "message"].dropna().unique()
        return f"no kernel row ran ok{': ' + reasons[0] if len(reasons) else ''}"
    return "\n".join([table.to_string(index=False, float_format=lambda v: f"{v:.3g}"), "", *targets(table)])


EXPERIMENT = Experiment(
    name="kernels",
    help="Fused Triton kernels against their torch references: do_bench time and GB/s against a device copy",
    stem="kernels",
    keys=KEYS,
    columns=COLUMNS,
    default=DEFAULT,
    quick=QUICK,
    cases=cases,
    measure=measure,
    summary=summary,
    isolate=False,  # do_bench times in this process, with CUDA events
    in_main_job=False,  # it times nothing on a CPU; a GPU runner runs it beside the main job (tox -e gpu)
    numbers=("time_ms", "gb_per_s", "rel_error"),
    ignores=("repeats",),  # do_bench repeats by time: --rep-ms
)
