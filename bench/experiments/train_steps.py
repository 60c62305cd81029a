r"""``fdsm-bench train-steps``: one complete optimizer step per (model, objective), the rows of tables 1, 2, 3, 5, 6.

Each row of ``fdsm.recipes.RECIPES`` (model, objective, the released code's settings and optimizer) is measured in
a worker process (``bench.sweep``): a synthetic batch of the model's input shape, ``warmup`` untimed steps, then
``repeats`` timed steps (median and IQR of ``zero_grad`` -> loss -> backward -> clip -> step), then the peak memory
of one more step above the process's baseline (model, optimizer state and batch already resident), and the loss.
An FD row's steps alternate, round by round, with steps of its gradient counterpart in the same worker, and its
``speedup`` (with ``speedup_q1``, ``speedup_q3``) is the median of the per-round time ratios counterpart / FD.
Image models run in ``--memory-format`` (default: the layout measured fastest for the model, ``MEMORY_FORMAT``,
see NOTE [memory format] in ``fdsm.recipes``); the others' flat batches are ``contiguous``. On CUDA, cuDNN picks
its convolution algorithms in the warm-up steps (``--cudnn-benchmark``, on by default, as the paper's code), and
float32 is IEEE float32 unless ``--float32-math tf32`` asks for PyTorch's default, TF32 convolutions.
Each row also has the median time of each phase of the step (``time_<phase>_ms``, ``fdsm.training.PHASES``) and
the step's model FLOPs (``gflop``, ``bench.flops``) with the rate it ran them at (``tflops``).

The measurement itself runs in the worker: ``bench.step_case``. A user's model (``--models file.py:factory``, the
contract in ``fdsm.models.user``) gets the objectives of ``fdsm.recipes.user_recipes`` at ``--batch`` and ``--lr``.

Writes ``train_steps.csv`` (resumable; one row per (model, objective), with ``world_size`` 1, ``backend`` none and
``scaling`` none: the data-parallel steps are ``fdsm-bench scaling``'s; a model that is not registered here gets an
``unsupported`` row) and ``train_steps.png``: time and peak memory per objective, one panel per model, each FD bar
labelled with its speed-up over the gradient-based objective it replaces (FD-SSM over SSM, FD-DSM over DSM,
FD-SSMVR over SSMVR; the paired ratios above, with their quartiles).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.patches import Patch

from bench.config import Shared, UsageError, at_least, option, positive, positive_int
from bench.environment import FLOAT32_MATH
from bench.experiment import Bench, Experiment
from bench.markdown import figure, table
from bench.memory import peak_memory
from bench.plots import finish, quartile_bar
from bench.step_case import USER_BATCH, USER_LR, Stepper, measure_step, recipe_for, recipes_of
from bench.user_model import (
    build_user_model,
    event_shape_option,
    is_user_model,
    model_source,
    refuse_event_shape,
    refuse_for_registered,
)
from fdsm.recipes import MEMORY_FORMATS, RECIPES, recipe_available
from fdsm.training import PHASES

REQUIRED = ("model", "objective", "batch", "dtype", "device", "time_ms", "time_ms_iqr", "peak_mem_mb", "loss",
            "status")
KEYS = ("model", "objective", "size", "batch", "dtype", "device", "memory_format", "cudnn_benchmark", "float32_math",
        "seed")
REGISTERED = tuple(dict.fromkeys(r.value.model for r in RECIPES))
# The distributed columns of a row measured in one process: ``fdsm-bench scaling`` (bench.experiments.scaling)
# writes the data-parallel rows, where world_size, backend and scaling are key columns. Here they are plain
# columns, so that a train_steps.csv written before them still resumes (CsvLog refuses a file without a key column).
SINGLE_PROCESS = {"world_size": 1, "backend": "none", "scaling": "none"}


def check_models(names: tuple[str, ...]) -> tuple[str, ...]:
    """``convert`` hook of ``--models``: registered names or users' factories."""
    unknown = [m for m in names if m not in REGISTERED and not is_user_model(m)]
    if unknown:
        raise UsageError(f"--models {','.join(names)}: unknown {unknown}; expected some of {', '.join(REGISTERED)}, "
                         "or a user's package.module:factory or file.py:factory")
    return names


# NCSN at the paper's batch of 128 is slow on a CPU even at its cpu size; 16 keeps the sweep in minutes.
CPU_BATCH = {"ncsn": 16}


def _cpu_batches() -> str:
    return ", ".join(f"{batch} for {model}" for model, batch in CPU_BATCH.items())


@dataclass(frozen=True)
class TrainStepsConfig:
    models: tuple[str, ...] = option(("dkef", "deep-ebm", "nice", "ncsn", "vae-score", "wae-score"),
                                     "models: registered names, or a user's package.module:factory or "
                                     "path/file.py:factory (the contract: fdsm/models/user.py)", convert=check_models,
                                     aliases=("--model",))
    objectives: tuple[str, ...] = option((), "row labels, e.g. SSM,FD-SSM", default_text="every row of the models")
    size: str | None = option(None, "model size", choices=("paper", "cpu"), default_text="paper on CUDA, else cpu")
    batch: int | None = option(None, "batch for every row", type=positive_int,
                               default_text=f"the paper's per model; on the CPU at size cpu, {_cpu_batches()}; a "
                                            f"user's model: {USER_BATCH}")
    event_shape: tuple[int, ...] | None = event_shape_option()
    lr: float | None = option(None, "a user model's Adam learning rate (registered models use their recipe's)",
                              convert=positive("--lr"), default_text=f"{USER_LR:g}")
    memory_format: str = option("auto", "layout of image models and batches", choices=("auto", *MEMORY_FORMATS),
                                default_text="auto, the faster one per model: channels_last for deep-ebm, "
                                             "contiguous for the others")
    cudnn_benchmark: bool = option(True, "on CUDA, cuDNN picks each convolution's fastest algorithm in the warm-up "
                                   "steps, as the paper's deep-EBM code sets it")
    float32_math: str = option("ieee", "on CUDA, how float32 convolutions compute: ieee (as on the paper's 1080 Ti, "
                               "which has no TF32) or tf32 (PyTorch's default on Ampere and later; matmuls stay ieee)",
                               choices=FLOAT32_MATH)
    warmup: int = option(2, "untimed steps per row", convert=at_least("--warmup", 0))
    repeats: int = 7  # timed steps per row (the shared --repeats)
    timeout_s: float = option(600.0, "seconds per row", flag="--timeout", convert=positive("--timeout"))


# The layout in which every objective's step of the model ran fastest (NOTE [memory format] in fdsm.recipes);
# models not listed use "contiguous", as the paper's code.
MEMORY_FORMAT = {"deep-ebm": "channels_last"}
DEFAULT = TrainStepsConfig()
QUICK = dataclasses.replace(DEFAULT, models=("nice",), objectives=("SSM", "FD-SSM"), size="cpu", batch=8, warmup=1,
                            repeats=2, timeout_s=120.0)


@functools.cache
def _event_shape(recipe_name: str, size: str) -> tuple[int, ...]:
    """The input shape of a recipe's model, from a build on the meta device (no memory, no initialization)."""
    with torch.device("meta"):
        return tuple(RECIPES.get(recipe_name).build_model(size).event_shape)


def _model_cases(model: str, config: TrainStepsConfig, size: str) -> list[tuple[str, int, tuple[int, ...], bool]]:
    """(objective, batch, event shape, available) per row of one model."""
    if is_user_model(model):
        event = tuple(build_user_model(model, config.event_shape, trains=True).event_shape)  # loaded and checked
        batch = config.batch or USER_BATCH
        labels = recipes_of({"model": model, "batch": batch, "lr": config.lr,
                             "event_shape": ",".join(map(str, config.event_shape or ()))})
        return [(label, batch, event, True) for label in labels]
    rows = []
    for entry in RECIPES:
        recipe = entry.value
        if recipe.model != model:
            continue
        batch = config.batch or (CPU_BATCH.get(model, recipe.batch) if size == "cpu" else recipe.batch)
        available = recipe_available(recipe)[0]
        rows.append((recipe.objective, batch, _event_shape(recipe.name, size) if available else (), available))
    return rows


def cases(config: TrainStepsConfig, shared: Shared) -> list[dict[str, Any]]:
    device = shared.device
    size = config.size or ("paper" if device.type == "cuda" else "cpu")
    refuse_event_shape(config.event_shape, config.models)
    if config.lr is not None:
        refuse_for_registered(f"--lr {config.lr:g}", "learning rate (of Adam)", config.models)
    config = dataclasses.replace(config, lr=config.lr or USER_LR)
    per_model = {model: _model_cases(model, config, size) for model in config.models}
    labels = {objective for rows in per_model.values() for objective, *_ in rows}
    unknown = sorted(set(config.objectives) - labels)
    if unknown:
        preset = (f" (--quick sets --objectives {','.join(QUICK.objectives)}, the rows of its model {QUICK.models[0]}; "
                  "pass --objectives for other models)" if config.objectives == QUICK.objectives else "")
        raise UsageError(f"--objectives: {unknown} is not a row of {', '.join(config.models)}; expected some of "
                         f"{sorted(labels)}{preset}")
    rows, flat_noted = [], set()
    for model, model_rows in per_model.items():
        user = {"event_shape": ",".join(map(str, config.event_shape or ())), "lr": config.lr,
                "model_source": model_source(model)} if is_user_model(model) else {}  # how a user's model is built
        for objective, batch, event, available in model_rows:
            if config.objectives and objective not in config.objectives:
                continue
            layout = MEMORY_FORMAT.get(model, "contiguous") if config.memory_format == "auto" else config.memory_format
            if available and len(event) != 3 and layout == "channels_last" and model not in flat_noted:
                flat_noted.add(model)  # said, not refused: the option serves the image models of a mixed run
                print(f"train-steps: note: --memory-format channels_last: {model}'s batches are flat {event}, with "
                      "one layout; its rows run contiguous", file=sys.stderr)
            if not available or len(event) != 3:
                layout = "contiguous"  # a flat batch (not (C, H, W)) has one layout; an unavailable row builds nothing
            rows.append({"model": model, "objective": objective, "size": "user" if is_user_model(model) else size,
                         "batch": batch, "dtype": shared.dtype_name, "device": str(device), "memory_format": layout,
                         "seed": shared.seed, "warmup": config.warmup, "repeats": config.repeats,
                         **SINGLE_PROCESS,
                         "cudnn_benchmark": config.cudnn_benchmark and device.type == "cuda",
                         "float32_math": config.float32_math if device.type == "cuda" else "ieee",  # no TF32 on CPUs
                         **user})
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
        # a value of 0 (a peak below what the probe resolves, on a tiny model) has no ratio
        return [counterpart.get((model, versus), float("nan")) / value if value > 0 else float("nan")
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


def plot(rows: pd.DataFrame, path: Path) -> None:
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


def summary(rows: pd.DataFrame) -> str:
    lines = [rows[["model", "objective", "batch", "memory_format", "time_ms", "time_ms_iqr", "peak_mem_mb", "loss",
                   "status"]].to_string(index=False)]
    ratios = speedups(rows)
    if len(ratios):
        lines += ["\nFD and Taylor rows against their nested-autograd counterpart, and FD against the Taylor step "
                  "(timed interleaved in one worker; median and quartiles of the per-round ratios):",
                  ratios.to_string(index=False, float_format=lambda v: f"{v:.2f}")]
    return "\n".join(lines)


def report(frame: pd.DataFrame, out: Path) -> str:
    ratios = speedups(frame).rename(columns={
        "speedup": "speed-up (median)", "speedup_q1": "q1", "speedup_q3": "q3", "flop_ratio": "FLOP ratio",
        "memory_ratio": "memory ratio", "versus_taylor": "strongest exact", "speedup_taylor": "speed-up over it",
        "speedup_taylor_q1": "its q1", "speedup_taylor_q3": "its q3"}).dropna(axis=1, how="all")  # e.g. no FLOPs
    return "\n".join([
        "## Training steps: FD objectives against their gradient-based twins",
        figure(out, "train_steps.png", "Time and peak memory of one complete optimizer step per objective."),
        "Above 1: the objective is faster / smaller / does less arithmetic than its nested-autograd counterpart "
        "(`versus`). The speed-up is the median and quartiles of the per-round time ratios, the objectives timed "
        "alternately in one worker; the FLOP ratio compares their model FLOPs per step (convolutions and matmuls, "
        "`bench.flops`). A `-Taylor` row is the same exact objective by Taylor mode; an FD row's speed-up over "
        "it (`strongest exact`) is FD's advantage over the strongest exact step:\n",
        table(ratios) if len(ratios) else "*(no FD objective with a twin in this run)*",
    ])


def benchmark(case: dict[str, Any]) -> Bench:
    """One complete step as a pytest-benchmark target; the row's memory and loss come after the timed rounds."""
    step = Stepper(recipe_for(case), case)

    def finish(_: Any) -> dict[str, Any]:
        memory = peak_memory(step, torch.device(case["device"]))
        loss = step.losses[-1].item()
        ok = bool(torch.isfinite(torch.tensor(loss)))
        return {"peak_mem_mb": memory.peak_mb, "reserved_mb": memory.reserved_mb, "loss": loss,
                "status": "ok" if ok else "error", "message": "" if ok else f"the loss is {loss}, not finite"}

    return Bench(call=step, finish=finish)


EXPERIMENT = Experiment(
    name="train-steps",
    help="Tables 1, 2, 3, 5, 6: time and peak memory of one complete training step per (model, objective)",
    stem="train_steps",
    keys=KEYS,
    columns=REQUIRED,
    default=DEFAULT,
    quick=QUICK,
    cases=cases,
    measure=measure_step,
    plot=plot,
    summary=summary,
    report=report,
    axes=("model", "objective", "batch", "memory_format"),  # batch and layout are chosen per model
    # a step time does not depend on the seed of the synthetic batch: compare runs made with other seeds
    compare_keys=tuple(k for k in KEYS if k != "seed"),
    benchmark=benchmark,
    numbers=("time_ms", "peak_mem_mb", "loss"),
)
