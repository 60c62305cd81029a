r"""``fdsm-bench train-steps``: one complete optimizer step per (model, objective), the rows of tables 1, 2, 3, 5, 6.

Each row of ``fdsm.training.RECIPES`` (model, objective, the released code's settings and optimizer) is measured in
a worker process (``bench.sweep``): a synthetic batch of the model's input shape, ``warmup`` untimed steps, then
``repeats`` timed steps (median and IQR of ``zero_grad`` -> loss -> backward -> clip -> step), then the peak memory
of one more step above the process's baseline (model, optimizer state and batch already resident), and the loss.

Writes ``train_steps.csv`` (resumable; one row per (model, objective); a model that is not registered here gets an
``unsupported`` row) and ``train_steps.png``: time and peak memory per objective, one panel per model, each FD bar
labelled with its speed-up over the gradient-based objective it replaces (FD-SSM over SSM, FD-DSM over DSM,
FD-SSMVR over SSMVR; ratios from the same run).
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

from bench.cli import DTYPES, dtype_name
from bench.config import comma_words, configure
from bench.csvlog import CsvLog
from bench.memory import peak_memory
from bench.plots import finish, quartile_bar
from bench.sweep import run_sweep
from bench.timing import fix_cpu_threads, measure_time, timing_columns
from fdsm.training import RECIPES, example_batch, make_optimizer, recipe_available, training_step

NAME = "train-steps"
HELP = "Tables 1, 2, 3, 5, 6: time and peak memory of one complete training step per (model, objective)"

REQUIRED = ("model", "objective", "batch", "dtype", "device", "time_ms", "time_ms_iqr", "peak_mem_mb", "loss",
            "status")
KEYS = ("model", "objective", "size", "batch", "dtype", "device", "seed")
# The gradient-based objective each FD row replaces: its speed-up is counterpart time / FD time.
COUNTERPART = {"FD-SSM": "SSM", "FD-SSM*": "SSM", "FD-DSM": "DSM", "FD-DSM*": "DSM", "FD-SSMVR": "SSMVR"}


@dataclass(frozen=True)
class TrainStepsConfig:
    models: tuple[str, ...] = ("dkef", "deep-ebm", "nice", "ncsn", "vae-score", "wae-score")
    objectives: tuple[str, ...] = ()  # () = every row of the chosen models
    size: str | None = None  # None: "paper" on CUDA, "cpu" otherwise
    batch: int | None = None  # None: the recipe's (the paper's) batch; CPU_BATCH on the CPU at size "cpu"
    warmup: int = 2
    repeats: int = 7
    timeout_s: float = 600.0


# NCSN at the paper's batch of 128 takes ~10 s a step on 2 cores even at ngf 8; 16 keeps the sweep in minutes.
CPU_BATCH = {"ncsn": 16}
DEFAULT = TrainStepsConfig()
QUICK = dataclasses.replace(DEFAULT, models=("nice",), objectives=("SSM", "FD-SSM"), size="cpu", batch=8, warmup=1,
                            repeats=2, timeout_s=120.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("train-steps")
    g.add_argument("--models", type=comma_words, help=f"models (default: {', '.join(DEFAULT.models)})")
    g.add_argument("--objectives", type=comma_words, help="row labels, e.g. SSM,FD-SSM (default: all)")
    g.add_argument("--size", choices=("paper", "cpu"), help="model size (default: paper on CUDA, else cpu)")
    g.add_argument("--batch", type=int, help="batch for every row (default: the paper's per model)")
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


def measure_step(case: Mapping[str, Any]) -> dict[str, Any]:
    """Time, peak memory and loss of one complete training step of ``case`` (a CSV key row)."""
    recipe = RECIPES.get(f"{case['model']}/{case['objective']}")
    available, reason = recipe_available(recipe)
    if not available:
        return {"status": "unsupported", "message": reason}
    device, dtype = torch.device(case["device"]), DTYPES[case["dtype"]]
    torch.manual_seed(int(case["seed"]))
    model = recipe.build_model(case["size"]).to(device=device, dtype=dtype)
    x = _seeded_batch(case["model"], case["size"], int(case["batch"]), case["dtype"], case["device"],
                      int(case["seed"]))
    if hasattr(model, "init_inducing"):  # DKEF: inducing points from data-like rows
        model.init_inducing(torch.randn(max(2 * model.config.n_inducing, len(x)), *model.event_shape,
                                        dtype=dtype, device=device))
    optimizer, scheduler = make_optimizer(model, recipe.optim, total_steps=10**6)
    losses = []

    def step() -> None:
        losses.append(training_step(model, lambda: recipe.loss(model, x), optimizer, clip=recipe.optim.clip,
                                    scheduler=scheduler, step=len(losses) + 1))

    timing = measure_time(step, device, warmup=int(case["warmup"]), repeats=int(case["repeats"]))
    memory = peak_memory(step, device)
    return {**timing_columns(timing), "threads": timing.threads, "peak_mem_mb": memory.peak_mb,
            "reserved_mb": memory.reserved_mb, "loss": losses[0].item(), "table": recipe.table,
            "optimizer": recipe.optim.name, "lr": recipe.optim.lr}


# ---- the sweep and the figure ---------------------------------------------------------------------------------

def cases(config: TrainStepsConfig, *, dtype: str, device: torch.device, seed: int) -> list[dict[str, Any]]:
    size = config.size or ("paper" if device.type == "cuda" else "cpu")
    rows = []
    for entry in RECIPES:
        recipe = entry.value
        if recipe.model not in config.models or (config.objectives and recipe.objective not in config.objectives):
            continue
        batch = config.batch or (CPU_BATCH.get(recipe.model, recipe.batch) if size == "cpu" else recipe.batch)
        rows.append({"model": recipe.model, "objective": recipe.objective, "size": size, "batch": batch,
                     "dtype": dtype, "device": str(device), "seed": seed, "warmup": config.warmup,
                     "repeats": config.repeats})
    unknown = sorted(set(config.models) - {r.value.model for r in RECIPES})
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; expected some of {sorted({r.value.model for r in RECIPES})}")
    return rows


def speedups(rows: pd.DataFrame) -> pd.DataFrame:
    """Per FD row: time and memory of its gradient counterpart over its own (same model, same run)."""
    ok = rows[rows.status == "ok"].set_index(["model", "objective"])
    out = []
    for (model, objective), row in ok.iterrows():
        base = COUNTERPART.get(objective)
        if base is not None and (model, base) in ok.index:
            ref = ok.loc[(model, base)]
            out.append({"model": model, "objective": objective, "versus": base,
                        "speedup": ref.time_ms / row.time_ms, "memory_ratio": ref.peak_mem_mb / row.peak_mem_mb})
    return pd.DataFrame(out, columns=["model", "objective", "versus", "speedup", "memory_ratio"])


def plot(rows: pd.DataFrame, path) -> None:
    models = list(rows.model.drop_duplicates())
    fig, axes = plt.subplots(2, len(models), figsize=(3.4 * len(models) + 1, 6.4), squeeze=False)
    ratios = speedups(rows).set_index(["model", "objective"])
    for j, model in enumerate(models):
        part = rows[(rows.model == model) & (rows.status == "ok")]
        colors = ["tab:orange" if o.startswith("FD") else "tab:blue" for o in part.objective]
        for i, (column, label) in enumerate((("time_ms", "time per step (ms)"), ("peak_mem_mb", "peak memory (MiB)"))):
            ax = axes[i, j]
            spread = quartile_bar(part) if column == "time_ms" else None
            bars = ax.bar(range(len(part)), part[column], color=colors, yerr=spread, capsize=2)
            ax.set_xticks(range(len(part)), part.objective, rotation=35, ha="right", fontsize=8)
            ax.grid(True, axis="y", alpha=0.3)
            if j == 0:
                ax.set_ylabel(label)
            if i == 0:
                batch = part.batch.iloc[0] if len(part) else ""
                ax.set_title(f"{model} (B={batch})", fontsize=10)
            for bar, objective in zip(bars, part.objective, strict=True):
                if (model, objective) in ratios.index:
                    r = ratios.loc[(model, objective)]
                    value = r.speedup if column == "time_ms" else r.memory_ratio
                    ax.annotate(f"{value:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=8, fontweight="bold")
    meta = rows.iloc[0]
    fig.suptitle(f"One complete training step (blue: gradient-based, orange: FD; label: FD speed-up / memory "
                 f"saving over its counterpart)\n{meta['device']}, {meta['dtype']}, size {meta['size']}, "
                 f"median of {meta['repeats']} steps, bars: quartiles", fontsize=10)
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
    print(rows[["model", "objective", "batch", "time_ms", "time_ms_iqr", "peak_mem_mb", "loss", "status"]]
          .to_string(index=False))
    if len(table):
        print("\nFD against its gradient counterpart (same run):")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\nwrote {args.out / 'train_steps.csv'} and {args.out / 'train_steps.png'}")
    return 0
