r"""``fdsm-bench scaling`` and ``fdsm-bench stencil-scaling``: FD's advantage when the work is spread over ranks.

Both launch ``torchrun --standalone --nproc-per-node N`` (``bench.distributed_case.launch``: gloo on the CPU with one
torch thread per rank, NCCL on CUDA with one GPU per rank) once per group of cases, and rank 0 returns the group's
rows; the sweep process writes them (resumable ``CsvLog``, one row per case). A launch that fails (a rank raised,
died, or hung past ``--collective-timeout``, or the launch ran past ``--timeout``) gives every case of its group a
``timeout`` or ``error`` row with the rank's message, never a hung sweep. The cases run in this process
(``isolate=False``): the ranks are the measuring processes (their peak memory is theirs), and the launcher stops
torchrun and its ranks on a timeout, Ctrl-C or SIGTERM, after which every row written so far is on disk.

**scaling** (``scaling.csv``): data-parallel training steps (``bench.distributed_case.measure_steps``). Cases are
(model, objective, world size N, scaling); one launch measures every objective of one model at one (N, scaling),
interleaved, so that each FD row's ``speedup`` over its counterpart (FD-SSM / SSM, FD-DSM / DSM, FD-SSMVR / SSMVR,
and SSM-Taylor / SSM) is a paired ratio at that N. Strong scaling keeps the global batch B (B/N per rank), weak
scaling B per rank (``batch`` is the global batch, ``batch_per_rank`` the rank's); at N = 1 they are one run,
measured once as ``strong``, the baseline of both. Speed-up against ranks, :math:`S_N = t_1 / t_N`, and
efficiency, :math:`E_N = S_N / N` (strong) or :math:`t_1 / t_N` (weak), compare rows of separate launches: they
carry the machine's drift between launches, unlike the paired FD speed-ups. The communication columns
(``comm_exposed_ms``: step minus the same step under ``no_sync()``; ``comm_allreduce_ms``: the all-reduce spans
timed by a DDP comm hook) are described in ``bench.distributed_case``.

**stencil-scaling** (``stencil_scaling.csv``): one T-th directional derivative of the deep EBM's log-density by
``fd-distributed`` (the S stencil points over the N ranks, ``fdsm.distributed``) against ``fd-batched`` (the whole
stencil on each rank, no communication), T = 1..6, timed side by side in one launch per N, with the problems of the
derivatives sweep (``bench.derivative_case``) and its default step. Exact methods have no such form: their T levels
are sequential.

Writes ``scaling.png`` (speed-up against ranks, strong and weak; FD's speed-up at each N; each step split into
compute and exposed communication) and ``stencil_scaling.png`` (latency against T per N, and fd-distributed's
speed-up over fd-batched).
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from bench.config import DTYPES, Shared, UsageError, at_least, bounded_orders, option, positive, positive_int
from bench.derivative_case import ProblemConfig, problem_columns
from bench.distributed_case import LaunchFailed, launch
from bench.experiment import Experiment
from bench.experiments.train_steps import KEYS as STEP_KEYS
from bench.experiments.train_steps import MEMORY_FORMAT
from bench.plots import finish, legend
from bench.step_case import COUNTERPART
from bench.steps import default_step
from bench.user_model import is_user_model
from fdsm.recipes import RECIPES

# The pairs this study runs: each FD (or Taylor) objective and the nested-autograd step it replaces.
PAIRS = {"FD-SSM": "SSM", "FD-DSM": "DSM", "FD-SSMVR": "SSMVR", "SSM-Taylor": "SSM"}
assert all(COUNTERPART[k] == v for k, v in PAIRS.items())
DISTRIBUTED_KEYS = ("world_size", "backend", "scaling")
KEYS = (*STEP_KEYS, *DISTRIBUTED_KEYS)
REQUIRED = ("model", "objective", "batch", "batch_per_rank", "world_size", "backend", "scaling", "dtype", "device",
            "time_ms", "time_ms_iqr", "time_compute_ms", "comm_exposed_ms", "comm_allreduce_ms", "peak_mem_mb",
            "loss", "status")
# Per-model global batches on the CPU (at size cpu): a step of a few hundred ms on one thread, so that 1 and 2 ranks
# of every pair fit in minutes on two cores. On CUDA: the recipe's (the paper's) batch.
CPU_BATCH = {"deep-ebm": 16, "ncsn": 8}
SCALINGS = ("strong", "weak")
LAUNCHER_HELP = ("the command prefix that starts the ranks of several nodes, e.g. \"srun ... torchrun --nnodes 2 "
                 "--nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:PORT\" (docs/gpu.md); it must start "
                 "--world-sizes ranks in all, its program must be on PATH, and --out must be on a filesystem every "
                 "node shares")
LAUNCHER_EXPECTED = "expected a command prefix whose first word is a program on PATH, such as \"srun ... torchrun ...\""


def _check_launcher(prefix: str) -> str:
    """``--launcher``: empty (torchrun on this node), or a command prefix whose program is on this node's PATH, so
    that a typo costs one line before any launch rather than an ``error`` row per case."""
    if not prefix:
        return prefix
    try:
        program = next(iter(shlex.split(prefix)), "")
    except ValueError as err:  # an unclosed quote
        raise UsageError(f"--launcher {prefix!r}: {err}; {LAUNCHER_EXPECTED}") from None
    if shutil.which(program) is None:
        raise UsageError(f"--launcher {prefix!r}: the program {program!r} is not found on PATH; {LAUNCHER_EXPECTED}")
    return prefix


def _launcher(config: Any, shared: Shared) -> dict[str, str]:
    """The case columns of ``--launcher``: the prefix and the shared folder its SPEC and RESULT files go to."""
    if not config.launcher:
        return {}
    return {"launcher": config.launcher, "launch_folder": str(Path(shared.out).resolve() / ".launches")}


def _backend(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def _objectives_of(model: str) -> list[str]:
    """The objectives of ``model`` that belong to a pair of ``PAIRS`` both of whose sides the model has."""
    have = [r.value.objective for r in RECIPES if r.value.model == model]
    return [o for o in have if (o in PAIRS and PAIRS[o] in have) or any(PAIRS[f] == o and f in have for f in PAIRS)]


def _check_models(names: tuple[str, ...]) -> tuple[str, ...]:
    registered = tuple(dict.fromkeys(r.value.model for r in RECIPES))
    bad = [m for m in names if m not in registered or not _objectives_of(m)]
    if not names or bad:
        fit = [m for m in registered if _objectives_of(m)]
        raise UsageError(f"--models {','.join(names)}: {bad or 'none'} has no FD pair; expected some of "
                         f"{', '.join(fit)}")
    return names


def _check_world_sizes(sizes: tuple[int, ...]) -> tuple[int, ...]:
    if not sizes or any(n < 1 for n in sizes):
        raise UsageError(f"--world-sizes {','.join(map(str, sizes))}: expected positive rank counts, e.g. 1,2")
    return tuple(sorted(set(sizes)))


def _check_scalings(names: tuple[str, ...]) -> tuple[str, ...]:
    bad = [s for s in names if s not in SCALINGS]
    if not names or bad:
        raise UsageError(f"--scalings {','.join(names)}: expected some of {', '.join(SCALINGS)}")
    return names


@dataclass(frozen=True)
class LaunchOptions:
    """The options of a torchrun launch that both scaling sweeps take."""

    world_sizes: tuple[int, ...] = option((1, 2), "ranks N per launch (one node)", convert=_check_world_sizes)
    collective_timeout_s: float = option(120.0, "seconds a rank waits in a collective (process-group timeout)",
                                         flag="--collective-timeout", convert=positive("--collective-timeout"))
    launcher: str = option("", LAUNCHER_HELP, default_text="torchrun --standalone on this node",
                           convert=_check_launcher)


@dataclass(frozen=True)
class ScalingConfig(LaunchOptions):
    models: tuple[str, ...] = option(("deep-ebm", "ncsn"), "models whose FD pairs are run", convert=_check_models)
    objectives: tuple[str, ...] = option((), "objectives to run, e.g. FD-SSM,SSM",
                                         default_text="every objective of the pairs FD-SSM/SSM, FD-DSM/DSM, "
                                                      "FD-SSMVR/SSMVR, SSM-Taylor/SSM that the model has")
    scalings: tuple[str, ...] = option(SCALINGS, "strong: global batch B, B/N per rank; weak: B per rank",
                                       convert=_check_scalings)
    size: str | None = option(None, "model size", choices=("paper", "cpu"), default_text="paper on CUDA, else cpu")
    batch: int | None = option(None, "B: the global batch of strong scaling, the per-rank batch of weak scaling",
                               type=positive_int,
                               default_text=f"on the CPU {CPU_BATCH}; on CUDA the recipe's (the paper's)")
    threads: int = option(1, "torch threads per rank on the CPU", type=positive_int)
    warmup: int = option(2, "untimed steps per objective", convert=at_least("--warmup", 0))
    repeats: int = 7  # timed rounds (the shared --repeats)
    timeout_s: float = option(600.0, "seconds per launch (one model at one N and scaling)", flag="--timeout",
                              convert=positive("--timeout"))


DEFAULT = ScalingConfig()
QUICK = dataclasses.replace(DEFAULT, models=("deep-ebm",), objectives=("FD-SSM", "SSM"), batch=4, warmup=1,
                            repeats=2, timeout_s=180.0, collective_timeout_s=60.0)


def cases(config: ScalingConfig, shared: Shared) -> list[dict[str, Any]]:
    """Group-major: one launch's cases (a model at one N and scaling) follow each other, so it runs once."""
    device = shared.device
    size = config.size or ("paper" if device.type == "cuda" else "cpu")
    per_model = {m: [o for o in _objectives_of(m) if not config.objectives or o in config.objectives]
                 for m in config.models}
    unknown = sorted(set(config.objectives) - {o for m in config.models for o in _objectives_of(m)})
    if unknown:
        raise UsageError(f"--objectives: {unknown} is not an objective of the pairs of {', '.join(config.models)}; "
                         f"expected some of {sorted({o for m in config.models for o in _objectives_of(m)})}")
    rows = []
    for model, objectives in per_model.items():
        if not objectives:
            continue
        base = config.batch or (CPU_BATCH.get(model) if device.type != "cuda" else None) \
            or RECIPES.get(f"{model}/{objectives[0]}").batch
        for world in config.world_sizes:
            for scaling in (("strong",) if world == 1 else config.scalings):  # N = 1: one run for both
                batch = base if scaling == "strong" else base * world
                if batch % world:
                    raise UsageError(f"--batch {base}: the global batch {batch} does not split evenly over {world} "
                                     "ranks; choose a batch divisible by every --world-sizes")
                layout = MEMORY_FORMAT.get(model, "contiguous")
                for objective in objectives:
                    rows.append({"model": model, "objective": objective, "size": size, "batch": batch,
                                 "dtype": shared.dtype_name, "device": str(device), "memory_format": layout,
                                 "cudnn_benchmark": device.type == "cuda", "float32_math": "ieee",
                                 "seed": shared.seed, "world_size": world, "backend": _backend(device.type),
                                 "scaling": scaling, "warmup": config.warmup, "repeats": config.repeats,
                                 "threads": config.threads, "launch_objectives": ",".join(objectives),
                                 "timeout_s": config.timeout_s, "collective_timeout_s": config.collective_timeout_s,
                                 **_launcher(config, shared)})
    return rows


# ---- one launch per group, shared by the group's cases -------------------------------------------------------------

_LAUNCHES: dict[tuple, dict[str, Any] | LaunchFailed] = {}  # group -> {member: row} or the failure, this process


def _grouped(case: dict[str, Any], member: tuple[str, ...], spec_cases: list[dict[str, Any]], kind: str,
             world: int) -> dict[str, Any]:
    """The measured columns of ``case``: its group's launch runs once (the first of its cases to come), the
    others read its rows; a failed launch gives each of them its status and message."""
    group = tuple(sorted((k, str(v)) for k, v in case.items() if k not in member))
    if group not in _LAUNCHES:
        spec = {"kind": kind, "device": case["device"], "threads": int(case["threads"]),
                "collective_timeout_s": float(case["collective_timeout_s"]), "cases": spec_cases}
        try:
            launcher = str(case.get("launcher") or "")
            rows = launch(spec, world, timeout_s=float(case["timeout_s"]), launcher=launcher,
                          folder=Path(case["launch_folder"]) if launcher else None)
            _LAUNCHES[group] = {tuple(str(c[k]) for k in member): row for c, row in zip(spec_cases, rows,
                                                                                       strict=True)}
        except LaunchFailed as failure:
            _LAUNCHES[group] = failure
    outcome = _LAUNCHES[group]
    if isinstance(outcome, LaunchFailed):
        return {"status": outcome.status, "message": str(outcome)}
    return outcome[tuple(str(case[k]) for k in member)]


def measure_scaling(case: dict[str, Any]) -> dict[str, Any]:
    """The row of one (model, objective, N, scaling): from its group's launch (``bench.distributed_case``)."""
    spec_cases = [{**case, "objective": o} for o in str(case["launch_objectives"]).split(",")]
    return _grouped(dict(case), ("objective",), spec_cases, "steps", int(case["world_size"]))


# ---- tables and figure --------------------------------------------------------------------------------------------

SCALING_COLUMNS = ["model", "objective", "scaling", "world_size", "batch", "batch_per_rank", "time_ms",
                   "speedup_vs_1", "efficiency", "time_compute_ms", "comm_exposed_ms", "comm_allreduce_ms",
                   "versus", "speedup", "speedup_q1", "speedup_q3", "peak_mem_mb"]


def scaling_table(rows: pd.DataFrame) -> pd.DataFrame:
    r"""Per ok row: :math:`S_N = t_1 / t_N` against the N = 1 row of the same model and objective whose batch is the
    row's per-rank batch times N (strong) or its per-rank batch (weak), and the efficiency :math:`E_N = S_N / N`
    (strong) or :math:`t_1 / t_N` (weak); with the row's compute / communication split and FD speed-up."""
    ok = rows[rows.status == "ok"].copy()
    if ok.empty:
        return pd.DataFrame(columns=SCALING_COLUMNS)
    single = ok[ok.world_size == 1].set_index(["model", "objective", "batch"]).time_ms
    base_batch = ok.batch.where(ok.scaling != "weak", ok.batch_per_rank)
    t1 = [single.get((m, o, b), math.nan) for m, o, b in zip(ok.model, ok.objective, base_batch, strict=True)]
    ok["speedup_vs_1"] = pd.Series(t1, index=ok.index) / ok.time_ms
    ok["efficiency"] = ok.speedup_vs_1.where(ok.scaling == "weak", ok.speedup_vs_1 / ok.world_size)
    order = {o: i for i, o in enumerate(PAIRS)}
    ok = ok.sort_values(["model", "scaling", "world_size"], kind="stable")
    ok = ok.assign(_o=ok.objective.map(lambda o: order.get(o, len(order)))).sort_values(
        ["model", "_o", "objective", "world_size", "scaling"], kind="stable")
    return ok.reindex(columns=SCALING_COLUMNS).reset_index(drop=True)


PALETTE = {"FD-SSM": "tab:orange", "SSM": "tab:blue", "SSM-Taylor": "goldenrod", "FD-DSM": "tab:red",
           "DSM": "tab:purple", "FD-SSMVR": "tab:green", "SSMVR": "tab:cyan"}


def plot(rows: pd.DataFrame, path: Path) -> None:
    table = scaling_table(rows)
    fig, axes = plt.subplots(1, 4, figsize=(22, 5.2))
    ranks = sorted(table.world_size.dropna().unique()) or [1]
    for ax, scaling, title in ((axes[0], "strong", "strong scaling: speed-up t_1 / t_N (global batch B)"),
                               (axes[1], "weak", "weak scaling: efficiency t_1 / t_N (B per rank)")):
        for (model, objective), part in table.groupby(["model", "objective"], sort=False):
            part = part[(part.scaling == scaling) | (part.world_size == 1)].sort_values("world_size")
            value = part.speedup_vs_1 if scaling == "strong" else part.efficiency
            ax.plot(part.world_size, value, marker="o", color=PALETTE.get(objective),
                    linestyle="--" if objective.startswith("FD") else "-", label=f"{model} {objective}")
        ideal = [n if scaling == "strong" else 1 for n in ranks]
        ax.plot(ranks, ideal, color="0.5", linestyle=":", label="ideal")
        ax.set_xticks(ranks)
        ax.set_xlabel("ranks N")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    legend(axes[0], fontsize=7)
    fd = table[table.speedup.notna()]
    labels = [f"{r.model}\n{r.objective}/{r.versus}\nN={r.world_size} {r.scaling}" for r in fd.itertuples()]
    axes[2].bar(range(len(fd)), fd.speedup, color=[PALETTE.get(o) for o in fd.objective],
                yerr=[(fd.speedup - fd.speedup_q1).clip(lower=0), (fd.speedup_q3 - fd.speedup).clip(lower=0)],
                capsize=2)
    axes[2].axhline(1, color="0.4", linewidth=0.8)
    axes[2].set_xticks(range(len(fd)), labels, fontsize=6, rotation=90)
    axes[2].set_title("FD (and Taylor) speed-up over the counterpart at each N\n(paired per round, quartiles)",
                      fontsize=10)
    axes[2].grid(True, axis="y", alpha=0.3)
    split = table[table.world_size > 1]
    labels = [f"{r.model} {r.objective}\nN={r.world_size} {r.scaling}" for r in split.itertuples()]
    axes[3].bar(range(len(split)), split.time_compute_ms, color="0.7", label="compute (the step under no_sync)")
    axes[3].bar(range(len(split)), split.comm_exposed_ms.clip(lower=0), bottom=split.time_compute_ms,
                color="tab:red", label="exposed communication (step - no_sync step)")
    axes[3].scatter(range(len(split)), split.comm_allreduce_ms, color="k", marker="_", s=120, zorder=3,
                    label="total all-reduce time (comm hook)")
    axes[3].set_xticks(range(len(split)), labels, fontsize=6, rotation=90)
    axes[3].set_ylabel("ms per step")
    axes[3].set_title("where a data-parallel step's time goes (N > 1)", fontsize=10)
    legend(axes[3], fontsize=7)
    axes[3].grid(True, axis="y", alpha=0.3)
    meta = rows.iloc[0]
    fig.suptitle(f"Data-parallel training steps (DistributedDataParallel, {meta['backend']}, {meta['device']}, "
                 f"{meta['dtype']}, size {meta['size']}, {meta.get('threads', '?')} thread(s) per rank); "
                 f"median of {meta['repeats']} synchronized steps (the slowest rank's)", fontsize=10)
    finish(fig, rows, ("model", "objective", "world_size", "scaling"), path)


def summary_table(title: str, table: pd.DataFrame) -> str:
    """``title`` and the ok rows' ``table``; where no row ran ok, one line saying so (not an empty DataFrame)."""
    if table.empty:
        return f"{title}: no row ran ok; the status and message columns say why"
    return f"{title}:\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3g}")


def summary(rows: pd.DataFrame) -> str:
    return summary_table("Data-parallel steps (speed-up and efficiency against N = 1; FD speed-up paired at each N)",
                         scaling_table(rows))


EXPERIMENT = Experiment(
    name="scaling",
    help="data-parallel training steps (DDP under torchrun) of every FD pair: speed-up against ranks, FD's "
         "speed-up at each N, compute and communication",
    stem="scaling",
    keys=KEYS,
    columns=REQUIRED,
    default=DEFAULT,
    quick=QUICK,
    cases=cases,
    measure=measure_scaling,
    plot=plot,
    summary=summary,
    axes=("model", "objective", "batch", "world_size", "scaling", "memory_format"),
    compare_keys=tuple(k for k in KEYS if k != "seed"),
    isolate=False,  # the ranks are the measuring processes; the launcher bounds and stops them (module docstring)
    in_main_job=False,  # it launches several processes per case: run it on its own
    numbers=("time_ms", "time_compute_ms", "comm_exposed_ms", "peak_mem_mb", "loss"),
)


# ---- stencil-scaling: fd-distributed against fd-batched -------------------------------------------------------------

STENCIL_METHODS = ("fd-batched", "fd-distributed")
STENCIL_KEYS = ("model", "size", "n_chan", "weights", "seed", "batch", "device", "method", "order", "accuracy", "eps",
                "dtype", "world_size", "backend")
STENCIL_REQUIRED = ("model", "method", "order", "batch", "dtype", "device", "world_size", "backend", "time_ms",
                    "time_ms_iqr", "peak_mem_mb", "status")


def _registered_model(name: str) -> str:
    """``--model`` of stencil-scaling: a registered name (``problem_columns`` checks which); its ranks build the
    model by name, so a user's factory is refused here, before it is loaded."""
    if is_user_model(name):
        raise UsageError(f"--model {name}: stencil-scaling takes a registered model (fdsm-bench models lists "
                         f"them), not a user's factory; run it in the derivatives sweep: fdsm-bench derivatives "
                         f"--model {name}")
    return name


@dataclass(frozen=True)
class StencilScalingConfig(ProblemConfig, LaunchOptions):
    model: str = option("deep-ebm", "a registered model (fdsm-bench models lists them); a user's model runs in the "
                        "derivatives sweep", convert=_registered_model)
    event_shape: tuple[int, ...] | None = None  # a user model's input shape: not an option here
    batch: int | None = option(None, "points per call", type=positive_int, default_text="64 on CUDA, else 8")
    orders: tuple[int, ...] = option((1, 2, 3, 4, 5, 6), "orders T, e.g. 1,2,3", convert=bounded_orders("--orders"))
    threads: int | None = option(1, "torch threads per rank on the CPU", type=positive_int)
    warmup: int = option(2, "untimed calls per method and order", convert=at_least("--warmup", 0))
    repeats: int = 15  # timed rounds (the shared --repeats)
    timeout_s: float = option(300.0, "seconds per launch (every order at one N)", flag="--timeout",
                              convert=positive("--timeout"))


STENCIL_DEFAULT = StencilScalingConfig()
STENCIL_QUICK = dataclasses.replace(STENCIL_DEFAULT, batch=2, orders=(1, 2), repeats=3, warmup=1,
                                    timeout_s=120.0, collective_timeout_s=60.0)


def stencil_cases(config: StencilScalingConfig, shared: Shared) -> list[dict[str, Any]]:
    """One launch per N: its cases (every order and method) follow each other."""
    batch = config.batch or (64 if shared.device.type == "cuda" else 8)
    problem = problem_columns(dataclasses.replace(config, batch=batch), shared)
    rows = []
    for world in config.world_sizes:
        for order in config.orders:
            for method in STENCIL_METHODS:
                rows.append({**problem, "method": method, "order": int(order), "accuracy": 2,
                             "eps": default_step(int(order), 2, shared.dtype), "dtype": shared.dtype_name,
                             "world_size": world, "backend": _backend(shared.device.type), "warmup": config.warmup,
                             "repeats": config.repeats, "threads": config.threads or 1,
                             "launch_orders": ",".join(map(str, config.orders)), "timeout_s": config.timeout_s,
                             "collective_timeout_s": config.collective_timeout_s, **_launcher(config, shared)})
    return rows


def measure_stencil_scaling(case: dict[str, Any]) -> dict[str, Any]:
    """The row of one (method, T, N): from the launch of its N (``bench.distributed_case.measure_stencil``)."""
    orders = [int(t) for t in str(case["launch_orders"]).split(",")]
    eps = {t: default_step(t, 2, DTYPES[case["dtype"]]) for t in orders}
    spec_cases = [{**case, "order": t, "eps": eps[t], "method": m} for t in orders for m in STENCIL_METHODS]
    return _grouped(dict(case), ("method", "order", "eps"), spec_cases, "stencil", int(case["world_size"]))


STENCIL_STYLE = {"fd-batched": {"color": "#16a085", "marker": "D"},
                 "fd-distributed": {"color": "#c0392b", "marker": "o"}}


def plot_stencil(rows: pd.DataFrame, path: Path) -> None:
    ok = rows[rows.status == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for (method, world), part in ok.groupby(["method", "world_size"], sort=True):
        part = part.sort_values("order")
        axes[0].errorbar(part.order, part.time_ms, yerr=[(part.time_ms - part.time_ms_q1).clip(lower=0),
                                                         (part.time_ms_q3 - part.time_ms).clip(lower=0)],
                         capsize=3, linestyle="-" if world == 1 else "--", label=f"{method}, N = {world}",
                         **STENCIL_STYLE.get(method, {}), alpha=1.0 if world > 1 else 0.6)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("order T")
    axes[0].set_ylabel("time per derivative (ms)")
    axes[0].set_title("latency of one T-th directional derivative", fontsize=10)
    legend(axes[0], fontsize=8)
    axes[0].grid(True, alpha=0.3)
    dist_rows = ok[(ok.method == "fd-distributed") & ok.speedup.notna()] if "speedup" in ok else ok.iloc[:0]
    for world, part in dist_rows.groupby("world_size"):
        part = part.sort_values("order")
        axes[1].errorbar(part.order, part.speedup, yerr=[(part.speedup - part.speedup_q1).clip(lower=0),
                                                         (part.speedup_q3 - part.speedup).clip(lower=0)],
                         capsize=3, marker="o", label=f"N = {world}")
    axes[1].axhline(1, color="0.4", linewidth=0.8)
    axes[1].set_xlabel("order T (S = T + 1 stencil points, split over the N ranks)")
    axes[1].set_ylabel("fd-batched time / fd-distributed time")
    axes[1].set_title("fd-distributed's speed-up over fd-batched (paired per round)", fontsize=10)
    legend(axes[1], fontsize=8)
    axes[1].grid(True, alpha=0.3)
    meta = rows.iloc[0]
    fig.suptitle(f"Stencil-parallel FD: the S points over N ranks, partial sums all-reduced ({meta['backend']}, "
                 f"{meta['device']}, {meta['dtype']}, {meta['model']} {meta['size']}, batch {meta['batch']}). "
                 "Exact methods cannot split this way: their T levels are sequential.", fontsize=9)
    finish(fig, rows, ("method", "order", "world_size"), path)


def stencil_summary(rows: pd.DataFrame) -> str:
    ok = rows[rows.status == "ok"]
    columns = [c for c in ("method", "order", "world_size", "points_per_rank", "time_ms", "time_ms_iqr", "speedup",
                           "speedup_q1", "speedup_q3", "rel_diff", "peak_mem_mb") if c in ok]
    return summary_table("fd-distributed against fd-batched (speed-up: fd-batched / fd-distributed, paired per round)",
                         ok[columns].sort_values(["world_size", "order", "method"]))


STENCIL_EXPERIMENT = Experiment(
    name="stencil-scaling",
    help="fd-distributed (stencil points over torchrun ranks) against fd-batched: latency of one derivative for "
         "T = 1..6 against ranks",
    stem="stencil_scaling",
    keys=STENCIL_KEYS,
    columns=STENCIL_REQUIRED,
    default=STENCIL_DEFAULT,
    quick=STENCIL_QUICK,
    cases=stencil_cases,
    measure=measure_stencil_scaling,
    plot=plot_stencil,
    summary=stencil_summary,
    axes=("method", "order", "eps", "world_size"),
    compare_keys=tuple(k for k in STENCIL_KEYS if k not in ("seed", "eps")),
    isolate=False,
    in_main_job=False,
    numbers=("time_ms", "peak_mem_mb"),
)
