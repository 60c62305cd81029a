r"""``fdsm-bench train-steps``: one complete optimizer step per (model, objective), the rows of tables 1, 2, 3, 5, 6.

Each row of ``fdsm.training.RECIPES`` (model, objective, the released code's settings and optimizer) is measured in
a worker process (``bench.sweep``): a synthetic batch of the model's input shape, ``warmup`` untimed steps, then
``repeats`` timed steps (median and IQR of ``zero_grad`` -> loss -> backward -> clip -> step), then the peak memory
of one more step above the process's baseline (model, optimizer state and batch already resident), and the loss.
An FD row's steps alternate, round by round, with steps of its gradient counterpart in the same worker, and its
``speedup`` (with ``speedup_q1``, ``speedup_q3``) is the median of the per-round time ratios counterpart / FD.
Image models run in ``--memory-format`` (default: the layout measured fastest for the model, ``MEMORY_FORMAT``,
see NOTE [memory format] in ``fdsm.training``); the others' flat batches are ``contiguous``. On CUDA, cuDNN picks
its convolution algorithms in the warm-up steps (``--cudnn-benchmark``, on by default, as the paper's code), and
float32 is IEEE float32 unless ``--float32-math tf32`` asks for PyTorch's default, TF32 convolutions.
Each row also has the median time of each phase of the step (``time_<phase>_ms``, ``fdsm.training.PHASES``) and
the step's model FLOPs (``gflop``, ``bench.flops``) with the rate it ran them at (``tflops``).

Writes ``train_steps.csv`` (resumable; one row per (model, objective); a model that is not registered here gets an
``unsupported`` row) and ``train_steps.png``: time and peak memory per objective, one panel per model, each FD bar
labelled with its speed-up over the gradient-based objective it replaces (FD-SSM over SSM, FD-DSM over DSM,
FD-SSMVR over SSMVR; the paired ratios above, with their quartiles).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.patches import Patch

from bench.cli import DTYPES, UsageError, dtype_name
from bench.config import comma_words, configure
from bench.csvlog import CsvLog
from bench.environment import FLOAT32_MATH, set_float32_math
from bench.flops import counted_gflop
from bench.memory import peak_memory
from bench.plots import finish, quartile_bar
from bench.sweep import exit_status, run_sweep
from bench.timing import PhaseClock, fix_cpu_threads, measure_interleaved, paired_ratio, timing_columns
from fdsm.training import (
    MEMORY_FORMATS,
    PHASES,
    RECIPES,
    Recipe,
    example_batch,
    in_memory_format,
    make_optimizer,
    recipe_available,
    training_step,
)

NAME = "train-steps"
HELP = "Tables 1, 2, 3, 5, 6: time and peak memory of one complete training step per (model, objective)"

REQUIRED = ("model", "objective", "batch", "dtype", "device", "time_ms", "time_ms_iqr", "peak_mem_mb", "loss",
            "status")
KEYS = ("model", "objective", "size", "batch", "dtype", "device", "memory_format", "cudnn_benchmark", "float32_math",
        "seed")
# The gradient-based objective each FD row replaces (the paper's exact step): its speed-up is counterpart time / FD
# time. A Taylor row is timed against the nested-reverse step it replaces, the same way.
COUNTERPART = {"FD-SSM": "SSM", "FD-SSM*": "SSM", "FD-DSM": "DSM", "FD-DSM*": "DSM", "FD-SSMVR": "SSMVR",
               "SSM-Taylor": "SSM", "SSMVR-Taylor": "SSMVR"}
# The strongest exact step of an FD row (Taylor mode, no double backward): a second speed-up, ``speedup_taylor``,
# from the same interleaved rounds. FD-DSM has none: DSM needs only first derivatives.
STRONGEST = {"FD-SSM": "SSM-Taylor", "FD-SSM*": "SSM-Taylor", "FD-SSMVR": "SSMVR-Taylor"}


@dataclass(frozen=True)
class TrainStepsConfig:
    models: tuple[str, ...] = ("dkef", "deep-ebm", "nice", "ncsn", "vae-score", "wae-score")
    objectives: tuple[str, ...] = ()  # () = every row of the chosen models
    size: str | None = None  # None: "paper" on CUDA, "cpu" otherwise
    batch: int | None = None  # None: the recipe's (the paper's) batch; CPU_BATCH on the CPU at size "cpu"
    memory_format: str = "auto"  # auto: MEMORY_FORMAT per model; or a MEMORY_FORMATS name
    cudnn_benchmark: bool = True  # on CUDA: let cuDNN time its convolution algorithms, as the paper's code does
    float32_math: str = "ieee"  # on CUDA: "ieee" as the paper's 1080 Ti (it has no TF32), or PyTorch's default "tf32"
    warmup: int = 2
    repeats: int = 7
    timeout_s: float = 600.0


# NCSN at the paper's batch of 128 takes ~10 s a step on 2 cores even at ngf 8; 16 keeps the sweep in minutes.
CPU_BATCH = {"ncsn": 16}
# The layout in which every objective's step of the model ran fastest, measured on this CPU and on an H200 with the
# same answer (NOTE [memory format] in fdsm.training); models not listed use "contiguous", as the paper's code.
MEMORY_FORMAT = {"deep-ebm": "channels_last"}
DEFAULT = TrainStepsConfig()
QUICK = dataclasses.replace(DEFAULT, models=("nice",), objectives=("SSM", "FD-SSM"), size="cpu", batch=8, warmup=1,
                            repeats=2, timeout_s=120.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("train-steps")
    g.add_argument("--models", type=comma_words, help=f"models (default: {', '.join(DEFAULT.models)})")
    g.add_argument("--objectives", type=comma_words, help="row labels, e.g. SSM,FD-SSM (default: all)")
    g.add_argument("--size", choices=("paper", "cpu"), help="model size (default: paper on CUDA, else cpu)")
    g.add_argument("--batch", type=int, help="batch for every row (default: the paper's per model)")
    g.add_argument("--memory-format", dest="memory_format", choices=("auto", *MEMORY_FORMATS),
                   help="layout of image models and batches (default: auto = the faster one per model, "
                        "channels_last for deep-ebm, contiguous for the others)")
    g.add_argument("--cudnn-benchmark", dest="cudnn_benchmark", action=argparse.BooleanOptionalAction,
                   help="on CUDA, cuDNN picks each convolution's fastest algorithm in the warm-up steps, as the "
                        "paper's deep-EBM code sets it (default: on)")
    g.add_argument("--float32-math", dest="float32_math", choices=FLOAT32_MATH,
                   help="on CUDA, how float32 convolutions compute: ieee (default; as on the paper's 1080 Ti, "
                        "which has no TF32) or tf32 (PyTorch's default on Ampere and later GPUs; matmuls stay ieee)")
    g.add_argument("--warmup", type=int, help="untimed steps per row (default: 2)")
    g.add_argument("--timeout", dest="timeout_s", type=float, help="seconds per row (default: 600)")


# ---- one measurement (runs in the worker) ---------------------------------------------------------------------

@functools.cache
def _seeded_batch(model_name: str, size: str, batch: int, dtype: str, device: str, seed: int) -> torch.Tensor:
    recipe = next(r.value for r in RECIPES if r.value.model == model_name)
    torch.manual_seed(seed)
    model = recipe.build_model(size)
    return example_batch(model, batch, dtype=DTYPES[dtype], device=device,
                         generator=torch.Generator().manual_seed(seed))


@dataclass
class Stepper:
    """One row's model, optimizer and batch, ready to take complete training steps: ``stepper()`` takes one, and
    ``losses`` records each step's loss."""

    recipe: Recipe
    case: Mapping[str, Any]
    losses: list[torch.Tensor] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        case, recipe = self.case, self.recipe
        device, dtype = torch.device(case["device"]), DTYPES[case["dtype"]]
        if device.type == "cuda":  # process-wide, so every CUDA row sets them; the warm-up steps do the tuning
            torch.backends.cudnn.benchmark = bool(case["cudnn_benchmark"])
            set_float32_math(case["float32_math"])
        torch.manual_seed(int(case["seed"]))
        model = recipe.build_model(case["size"]).to(device=device, dtype=dtype)
        x = _seeded_batch(case["model"], case["size"], int(case["batch"]), case["dtype"], case["device"],
                          int(case["seed"]))
        if hasattr(model, "init_inducing"):  # DKEF: inducing points from data-like rows
            model.init_inducing(torch.randn(max(2 * model.config.n_inducing, len(x)), *model.event_shape,
                                            dtype=dtype, device=device))
        self.model, self.x = in_memory_format(model, x, case["memory_format"])
        self.optimizer, self.scheduler = make_optimizer(self.model, recipe.optim, total_steps=10**6)
        self.clock = PhaseClock(device)

    def __call__(self) -> None:
        self.clock.start()
        loss = training_step(self.model, lambda: self.recipe.loss(self.model, self.x), self.optimizer,
                             clip=self.recipe.optim.clip, scheduler=self.scheduler, step=len(self.losses) + 1,
                             mark=self.clock.mark)
        self.losses.append(loss)


def _counterpart(case: Mapping[str, Any], versus: str) -> tuple[Stepper | None, str]:
    """The stepper of the FD row's gradient counterpart after one trial step, or None and why it cannot run."""
    try:
        other = Stepper(RECIPES.get(f"{case['model']}/{versus}"), case)
        other()
    except Exception as err:  # e.g. exact SSM out of memory where FD fits: the FD row is then timed alone
        return None, f"{versus} could not run beside it ({type(err).__name__}: {err}), so no speed-up"
    return other, ""


def measure_step(case: Mapping[str, Any]) -> dict[str, Any]:
    """Time, peak memory and loss of one complete training step of ``case`` (a CSV key row).

    An FD row is timed interleaved with its gradient counterpart (``COUNTERPART``) and, where it has one, with the
    strongest exact step (``STRONGEST``, Taylor mode), round by round in this one worker
    (``bench.timing.measure_interleaved``). Its ``speedup`` columns are the median and quartiles of the per-round
    ratios counterpart / FD, and its ``speedup_taylor`` columns the same against the Taylor step: each claim is a
    ratio measured side by side (DESIGN.md), and a slow phase of the machine lands on all of them. The rivals are
    dropped before the memory probe.
    """
    recipe = RECIPES.get(f"{case['model']}/{case['objective']}")
    available, reason = recipe_available(recipe)
    if not available:
        return {"status": "unsupported", "message": reason}
    device = torch.device(case["device"])
    step = Stepper(recipe, case)
    rivals = {}  # column suffix -> (objective, its stepper): each timed in the same rounds as this row
    notes = []
    for suffix, table in (("", COUNTERPART), ("_taylor", STRONGEST)):
        if (versus := table.get(case["objective"])) is not None:
            other, note = _counterpart(case, versus)
            notes.append(note)
            if other is not None:
                rivals[suffix] = versus, other
    timings = measure_interleaved([step, *(other for _, other in rivals.values())], device,
                                  warmup=int(case["warmup"]), repeats=int(case["repeats"]))
    paired: dict[str, Any] = {"message": "; ".join(filter(None, notes))} if any(notes) else {}
    for (suffix, (versus, _)), timing in zip(rivals.items(), timings[1:], strict=True):
        ratio = paired_ratio(timing, timings[0])
        paired |= {f"versus{suffix}": versus, f"speedup{suffix}": ratio.median, f"speedup{suffix}_q1": ratio.q1,
                   f"speedup{suffix}_q3": ratio.q3}
    del rivals  # their models, optimizer states and batches leave before the memory probe
    phases = {f"time_{phase}_ms": ms for phase, ms in step.clock.median_ms(last=timings[0].repeats).items()}
    gflop, not_counted = counted_gflop(case)
    if not_counted:
        paired["message"] = "; ".join(filter(None, [paired.get("message"), not_counted]))
    memory = peak_memory(step, device)
    return {**timing_columns(timings[0]), **phases, "gflop": gflop, "tflops": gflop / timings[0].median_ms,
            "threads": timings[0].threads, "peak_mem_mb": memory.peak_mb,
            "reserved_mb": memory.reserved_mb, "loss": step.losses[0].item(), "table": recipe.table,
            "optimizer": recipe.optim.name, "lr": recipe.optim.lr, **paired}


# ---- the sweep and the figure ---------------------------------------------------------------------------------

@functools.cache
def _event_shape(recipe_name: str, size: str) -> tuple[int, ...]:
    """The input shape of a recipe's model, from a build on the meta device (no memory, no initialization)."""
    with torch.device("meta"):
        return tuple(RECIPES.get(recipe_name).build_model(size).event_shape)


def cases(config: TrainStepsConfig, *, dtype: str, device: torch.device, seed: int) -> list[dict[str, Any]]:
    size = config.size or ("paper" if device.type == "cuda" else "cpu")
    rows = []
    for entry in RECIPES:
        recipe = entry.value
        if recipe.model not in config.models or (config.objectives and recipe.objective not in config.objectives):
            continue
        batch = config.batch or (CPU_BATCH.get(recipe.model, recipe.batch) if size == "cpu" else recipe.batch)
        layout = config.memory_format
        if layout == "auto":
            layout = MEMORY_FORMAT.get(recipe.model, "contiguous")
        if not recipe_available(recipe)[0] or len(_event_shape(recipe.name, size)) != 3:
            layout = "contiguous"  # a flat batch (not (C, H, W)) has one layout; an unavailable row builds nothing
        rows.append({"model": recipe.model, "objective": recipe.objective, "size": size, "batch": batch,
                     "dtype": dtype, "device": str(device), "memory_format": layout,
                     "seed": seed, "warmup": config.warmup, "repeats": config.repeats,
                     "cudnn_benchmark": config.cudnn_benchmark and device.type == "cuda",
                     "float32_math": config.float32_math if device.type == "cuda" else "ieee"})  # a CPU has no TF32
    unknown = sorted(set(config.models) - {r.value.model for r in RECIPES})
    if unknown:
        raise UsageError(f"--models: unknown {unknown}; expected some of {sorted({r.value.model for r in RECIPES})}")
    labels = {r.value.objective for r in RECIPES if r.value.model in config.models}
    unknown = sorted(set(config.objectives) - labels)
    if unknown:
        raise UsageError(f"--objectives: {unknown} is not a row of {', '.join(config.models)}; expected some of "
                         f"{sorted(labels)}")
    return rows


SPEEDUP_COLUMNS = ["model", "objective", "versus", "speedup", "speedup_q1", "speedup_q3", "flop_ratio",
                   "memory_ratio", "versus_taylor", "speedup_taylor", "speedup_taylor_q1", "speedup_taylor_q3"]


def speedups(rows: pd.DataFrame) -> pd.DataFrame:
    """Per FD row: its paired speed-up over its gradient counterpart (median and quartiles of the per-round ratios),
    and the counterpart / FD ratios of model FLOPs and of peak memory (NaN when the counterpart's row is not in this
    run, or, for FLOPs, in a CSV from before they were counted)."""
    ok = rows[rows.status == "ok"]
    if "speedup" not in ok:
        return pd.DataFrame(columns=SPEEDUP_COLUMNS)
    fd = ok[ok.speedup.notna()]

    def counterpart_over_fd(column: str) -> list[float] | float:
        if column not in ok:
            return float("nan")
        counterpart = ok.set_index(["model", "objective"])[column]
        return [counterpart.get((model, versus), float("nan")) / value
                for model, versus, value in zip(fd.model, fd.versus, fd[column], strict=True)]

    fd = fd.assign(flop_ratio=counterpart_over_fd("gflop"), memory_ratio=counterpart_over_fd("peak_mem_mb"))
    return fd.reindex(columns=SPEEDUP_COLUMNS).reset_index(drop=True)  # a CSV from before Taylor rows lacks some


PANELS_PER_ROW = 3  # models side by side; more wrap onto further rows
# How the time bars show the phases of fdsm.training.PHASES: the loss phase is the plain part at the bottom.
PHASE_HATCH = {"backward": "////", "update": "...."}
PHASE_LEGEND = [Patch(facecolor="0.75", label="loss: forwards (+ create_graph passes)"),
                Patch(facecolor="0.75", hatch=PHASE_HATCH["backward"], edgecolor="white", label="backward"),
                Patch(facecolor="0.75", hatch=PHASE_HATCH["update"], edgecolor="white", label="clip + optimizer")]


def _split_by_phase(ax, part: pd.DataFrame) -> None:
    """Hatch each time bar's backward and update parts: the bar (the median step time) is divided in proportion
    to the medians of the phases (``time_<phase>_ms``); a row without them (an older CSV) stays plain."""
    columns = [f"time_{phase}_ms" for phase in PHASES]
    if not set(columns) <= set(part):
        return
    shares = part[columns].div(part[columns].sum(axis=1), axis=0).to_numpy()  # (rows, phases)
    tops = part.time_ms.to_numpy()[:, None] * shares.cumsum(axis=1)  # where each phase ends, from the bottom
    for k, phase in enumerate(PHASES[1:], start=1):
        ax.bar(range(len(part)), tops[:, k] - tops[:, k - 1], bottom=tops[:, k - 1], color="none",
               hatch=PHASE_HATCH[phase], edgecolor="white", linewidth=0)


def plot(rows: pd.DataFrame, path) -> None:
    models = list(rows.model.drop_duplicates())
    columns = min(len(models), PANELS_PER_ROW)
    blocks = -(-len(models) // columns)  # rows of models; each is a time row above a memory row
    most_bars = rows[rows.status == "ok"].groupby("model").size().max() if (rows.status == "ok").any() else 1
    width = max(5.2, 0.8 * most_bars)  # room for three-line speed-up labels over every bar of the fullest panel
    fig, axes = plt.subplots(2 * blocks, columns, figsize=(width * columns + 0.6, 6.2 * blocks), squeeze=False)
    ratios = speedups(rows).set_index(["model", "objective"])
    for empty in range(len(models), blocks * columns):  # the unused places of the last row of models
        block, column = divmod(empty, columns)
        axes[2 * block, column].set_visible(False)
        axes[2 * block + 1, column].set_visible(False)
    for j, model in enumerate(models):
        part = rows[(rows.model == model) & (rows.status == "ok")]
        colors = ["tab:orange" if o.startswith("FD") else "goldenrod" if o.endswith("-Taylor") else "tab:blue"
                  for o in part.objective]
        block, column = divmod(j, columns)
        for i, (value, label) in enumerate((("time_ms", "time per step (ms)"), ("peak_mem_mb", "peak memory (MiB)"))):
            ax = axes[2 * block + i, column]
            spread = quartile_bar(part) if value == "time_ms" else None
            bars = ax.bar(range(len(part)), part[value], color=colors, yerr=spread, capsize=2,
                          error_kw={"zorder": 3})  # the whiskers above the phases' hatching
            if value == "time_ms":
                _split_by_phase(ax, part)
            ax.set_xticks(range(len(part)), part.objective, rotation=35, ha="right", fontsize=8)
            ax.grid(True, axis="y", alpha=0.3)
            ax.margins(y=0.28)  # room for the labels above the tallest bar
            if column == 0:
                ax.set_ylabel(label)
            if i == 0 and len(part):
                first = part.iloc[0]
                ax.set_title(f"{model} (B={first.batch}, {first.memory_format})", fontsize=10)
            for k, (bar, objective) in enumerate(zip(bars, part.objective, strict=True)):
                if (model, objective) in ratios.index:
                    r = ratios.loc[(model, objective)]
                    if value != "time_ms" and pd.isna(r.memory_ratio):  # the counterpart's row is not in this run
                        continue
                    text = (f"{r.speedup:.2f}x\n[{r.speedup_q1:.2f}, {r.speedup_q3:.2f}]" if value == "time_ms"
                            else f"{r.memory_ratio:.2f}x")
                    if value == "time_ms" and pd.notna(r.flop_ratio):
                        text += f"\nFLOPs {r.flop_ratio:.2f}x"
                    if value == "time_ms" and pd.notna(r.speedup_taylor):
                        text += f"\nvs Taylor {r.speedup_taylor:.2f}x"
                    top = bar.get_height() + (spread[1][k] if spread is not None else 0)  # above the q3 whisker
                    ax.annotate(text, (bar.get_x() + bar.get_width() / 2, top),
                                ha="center", va="bottom", fontsize=7, fontweight="bold")
    meta = rows.iloc[0]
    setting = f"{meta['device']}, {meta['dtype']}"
    if str(meta["device"]).startswith("cuda"):  # how cuDNN ran, which moves CUDA step times
        search = "on" if meta.get("cudnn_benchmark") else "off"
        setting += f" ({meta.get('float32_math', 'tf32')} convolutions, cuDNN algorithm search {search})"
    fig.suptitle(f"One complete training step per objective (blue: nested autograd, gold: Taylor mode, orange: FD); "
                 f"{setting}, size {meta['size']}, median of {meta['repeats']} steps, bars: quartiles.\n"
                 "Time labels: speed-up over the nested-autograd counterpart, median [quartiles] of the per-round "
                 "ratios, timed alternately in one worker, counterpart model FLOPs / its FLOPs, and an FD row's "
                 "speed-up over the Taylor step.\n"
                 "Memory labels: counterpart peak / FD peak.", fontsize=10)
    fig.legend(handles=PHASE_LEGEND, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=9,
               title="time bars, split in proportion to the median time of each phase of the step", title_fontsize=9)
    finish(fig, rows, ("model", "objective"), path)


def run(args: argparse.Namespace) -> int:
    config = configure(args, DEFAULT, QUICK)
    threads = fix_cpu_threads()
    dtype = dtype_name(args.dtype)
    todo = cases(config, dtype=dtype, device=args.device, seed=args.seed)
    if args.repeats is not None:
        todo = [{**c, "repeats": args.repeats} for c in todo]
    log = CsvLog(args.out / "train_steps.csv", key_columns=KEYS, columns=REQUIRED)
    rows = run_sweep(todo, measure_step, log, device=args.device, timeout_s=config.timeout_s, threads=threads,
                     desc=NAME)
    plot(rows, args.out / "train_steps.png")
    table = speedups(rows)
    print(rows[["model", "objective", "batch", "memory_format", "time_ms", "time_ms_iqr", "peak_mem_mb", "loss",
                "status"]]
          .to_string(index=False))
    if len(table):
        print("\nFD and Taylor rows against their nested-autograd counterpart, and FD against the Taylor step (timed "
              "interleaved in one worker; median and quartiles of the per-round ratios):")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\nwrote {args.out / 'train_steps.csv'} and {args.out / 'train_steps.png'}")
    return exit_status(rows, NAME)
