r"""``fdsm-bench train``: short real training runs that compare the objectives, like tables 1 and 2 and figure 4.

- **DKEF on wine** (table 1 analogue; scikit-learn's bundled wine data, 13 features, whitened, ``dkef_split``'s
  noise): SSM, SSMVR and FD-SSM with the table-1 recipes (Adam 1e-2, clip 1, alpha on half the batch).
  Held-out metrics: exact SM loss (eq. 1) and NLL, with log Z by importance sampling from q = N(0, 4 I) as the
  released code does (:math:`\log Z \approx \log \frac1n \sum_i \tilde p(z_i)/q(z_i)`, z_i ~ q), alpha fitted on
  the training data.
- **Deep EBM on digits** (table 2 analogue; scikit-learn's 8x8 digits, at their native 8x8 resolution so that the
  exact SM metric's d = 64 backward passes stay cheap): DSM vs FD-DSM and SSM vs FD-SSM with the table-2 recipes,
  except the learning rate (``--ebm-lr``, default 1e-3: the paper's 5e-5 / 1e-5 are for 300k steps).
  Held-out metric: exact SM loss.

Each run trains for ``steps`` steps or ``budget_s`` seconds of training wall-clock, whichever comes first; the
metrics are evaluated every ``eval_every`` steps outside the timed window. ``--data NAME[:PATH]``
(``bench.data_option``) replaces the data of the run of its kind: images feed the deep EBM (resized to 8x8, since
the held-out exact SM metric takes d backward passes), tabular rows feed DKEF. ``--dtype`` is float32 or float64.

Writes ``train.csv`` through the crash-safe ``CsvLog``, one row per evaluation as it happens (model, objective,
step, wall_s, loss, sm_loss, nll, time_ms_per_step; the run's last row has ``last`` true): a re-run skips the runs
that finished. A run that fails (a non-finite loss, say) gets an ``error`` row and the others go on; the exit
status is then 1. Also ``train_table.csv`` (the final row per run, as in table 1) and ``train.png`` (held-out SM
loss against training wall-clock, a panel per model, as in figure 4).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch import Tensor, nn

from bench.config import Shared, UsageError, option, positive, positive_int
from bench.csvlog import CsvLog, write_atomic
from bench.data_option import check_data, fit_to_event, read_data
from bench.environment import metadata
from bench.experiment import Command
from bench.plots import save
from bench.sweep import exit_status
from bench.timing import fix_cpu_threads
from fdsm import objectives as obj
from fdsm.data import digits, dkef_split, sklearn_wine
from fdsm.recipes import RECIPES
from fdsm.training import Record, train

KEYS = ("model", "objective", "step", "dtype", "device", "seed")
COLUMNS = ("wall_s", "loss", "sm_loss", "nll", "time_ms_per_step", "last", "status")
EBM_EVENT = (1, 8, 8)  # the deep EBM's input here: d = 64 backward passes per held-out SM evaluation
Emit = Callable[[dict], None]


@dataclass(frozen=True)
class TrainConfig:
    dkef_objectives: tuple[str, ...] = option(("SSM", "SSMVR", "FD-SSM"), "DKEF objectives")
    ebm_objectives: tuple[str, ...] = option(("DSM", "FD-DSM", "SSM", "FD-SSM"), "deep EBM objectives")
    dkef_steps: int = 300
    ebm_steps: int = 400
    budget_s: float = option(20.0, "training seconds per run", flag="--budget", convert=positive("--budget"))
    eval_every: int = option(50, "steps between evaluations", type=positive_int)
    ebm_lr: float = option(1e-3, "deep EBM learning rate", convert=positive("--ebm-lr"))
    data: str | None = option(None, "data NAME[:PATH] through fdsm.data: images for the deep EBM, tabular rows for "
                              "DKEF", convert=check_data, default_text="digits and wine, embedded")
    ebm_batch: int = 64
    dkef_batch: int = 100  # the 145 training rows of sklearn wine cannot fill the paper's 200
    is_samples: int = 100_000  # importance samples for log Z
    ebm_width: int = 8


DEFAULT = TrainConfig()
QUICK = dataclasses.replace(DEFAULT, dkef_objectives=("FD-SSM",), ebm_objectives=("FD-DSM",), dkef_steps=2,
                            ebm_steps=2, eval_every=2, is_samples=1000, ebm_width=2, ebm_batch=16, dkef_batch=40)


def held_out_sm(log_density, x: Tensor, chunk: int = 64) -> float:
    """Exact SM loss (eq. 1) averaged over x, in chunks."""
    return sum(obj.sm_loss(log_density, part).item() * len(part) for part in x.split(chunk)) / len(x)


def dkef_nll(model: nn.Module, x: Tensor, samples: int, generator: torch.Generator) -> float:
    r"""Mean -log p(x) = -(log p~(x) - log Z), :math:`\log Z` by importance sampling from q = N(0, 2^2 I)."""
    d = x.shape[1]
    with torch.no_grad():
        terms = []
        for n in [min(20_000, samples - i) for i in range(0, samples, 20_000)]:
            z = 2.0 * torch.randn(n, d, generator=generator, dtype=x.dtype).to(x.device)
            log_q = -0.5 * (z / 2.0).pow(2).sum(1) - d * math.log(2.0) - 0.5 * d * math.log(2 * math.pi)
            terms.append(model.log_density(z) - log_q)
        log_w = torch.cat(terms)
        log_z = torch.logsumexp(log_w, 0) - math.log(len(log_w))
        return (log_z - model.log_density(x).mean()).item()


def _run_dkef(config: TrainConfig, seed: int, device: torch.device, dtype: torch.dtype = torch.float32,
              table: Tensor | None = None, emit: Emit | None = None) -> list[dict]:
    split = dkef_split(sklearn_wine() if table is None else table, seed=seed)
    train_x = split["train"].to(device=device, dtype=dtype)
    held_out = torch.cat([split["val"], split["test"]]).to(device=device, dtype=dtype)
    rows = []
    for objective in config.dkef_objectives:
        torch.manual_seed(seed)
        recipe = dataclasses.replace(RECIPES.get(f"dkef/{objective}"), batch=config.dkef_batch)
        model = recipe.build_model("cpu", dim=train_x.shape[1]).to(device=device, dtype=dtype)
        model.init_inducing(train_x)
        g = torch.Generator().manual_seed(seed)  # the training batches
        g_eval = torch.Generator().manual_seed(seed + 1)  # alpha's directions and the importance samples

        def evaluate(model: nn.Module = model, g_eval: torch.Generator = g_eval) -> dict:
            # Its own generator, so that how often it runs changes neither the training batches nor the draws of
            # the training steps (the global generator).
            v = (torch.randint(0, 2, train_x.shape, generator=g_eval) * 2 - 1).to(train_x)  # Rademacher, (N, d)
            model.fit_alpha(train_x, v)
            return {"sm_loss": held_out_sm(model.log_density, held_out),
                    "nll": dkef_nll(model, held_out, config.is_samples, g_eval)}

        rows += _records("dkef", objective, model, recipe, train_x, config, config.dkef_steps, evaluate, g, emit)
    return rows


def _run_ebm(config: TrainConfig, seed: int, device: torch.device, dtype: torch.dtype = torch.float32,
             images: Tensor | None = None, emit: Emit | None = None) -> list[dict]:
    data = digits(EBM_EVENT) if images is None else fit_to_event(images, EBM_EVENT)  # (N, 1, 8, 8)
    data = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))].to(device=device,
                                                                                            dtype=dtype)
    held_out, train_x = data[:200], data[200:]
    rows = []
    for objective in config.ebm_objectives:
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)  # every objective sees the same batches, however far others ran
        base = RECIPES.get(f"deep-ebm/{objective}")
        recipe = dataclasses.replace(base, batch=config.ebm_batch,
                                     optim=dataclasses.replace(base.optim, lr=config.ebm_lr))
        model = recipe.build_model("cpu", image_size=8, n_chan=config.ebm_width).to(device=device, dtype=dtype)

        def evaluate(model: nn.Module = model) -> dict:
            return {"sm_loss": held_out_sm(model.log_density, held_out), "nll": math.nan}

        rows += _records("deep-ebm", objective, model, recipe, train_x, config, config.ebm_steps, evaluate, g, emit)
    return rows


def _records(model_name: str, objective: str, model: nn.Module, recipe, data: Tensor, config: TrainConfig,
             steps: int, evaluate, g: torch.Generator, emit: Emit | None = None) -> list[dict]:
    """Train one run; each evaluation's row goes to ``emit`` once the next one comes (the last when the run ends,
    marked ``last``), and all of them are returned."""
    rows: list[dict] = []

    def on_record(record: Record) -> None:
        row = {"model": model_name, "objective": objective, "step": record.step, "wall_s": record.wall_s,
               "loss": record.loss, **record.metrics, "time_ms_per_step": 1e3 * record.wall_s / record.step,
               "batch": recipe.batch, "lr": recipe.optim.lr, "last": False, "status": "ok"}
        rows.append(row)
        print(f"{model_name:9s} {objective:8s} step {record.step:4d}  {record.wall_s:6.1f}s  loss {record.loss:+.4g}"
              f"  held-out SM {row['sm_loss']:+.4g}  NLL {row['nll']:.4g}", flush=True)
        if emit is not None and len(rows) > 1:  # the one before: this one may be the last, to be marked so
            emit(rows[-2])

    train(model, recipe, data, steps=steps, evaluate=evaluate, eval_every=config.eval_every, generator=g,
          time_budget_s=config.budget_s, on_record=on_record)
    if rows:
        rows[-1]["last"] = True
        if emit is not None:
            emit(rows[-1])
    return rows


def plot(rows: pd.DataFrame, path) -> None:
    models = list(rows.model.drop_duplicates())
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.0), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for objective, part in rows[rows.model == model].groupby("objective", sort=False):
            ax.plot(part.wall_s, part.sm_loss, marker="o", markersize=3,
                    linestyle="--" if objective.startswith("FD") else "-", label=objective)
        ax.set(xlabel="training wall-clock (s)", ylabel="held-out exact SM loss (eq. 1)", title=model)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Held-out SM loss against training time (figure 4 analogue; dashed: FD objectives)", fontsize=10)
    fig.tight_layout()
    save(fig, path)


def _check_dtype(shared: Shared) -> None:
    if shared.dtype not in (torch.float32, torch.float64):
        raise UsageError(f"--dtype {shared.dtype_name}: train runs in float32 or float64 (the exact held-out "
                         "metrics need the precision)")


def run(config: TrainConfig, shared: Shared) -> int:
    _check_dtype(shared)
    data = read_data(config.data) if config.data is not None else None  # a bad file: one line, before training
    images = data if data is not None and data.dim() == 4 else None
    table = data if data is not None and data.dim() == 2 else None
    if data is not None and images is None and table is None:
        raise UsageError(f"--data {config.data}: expected images (N, C, H, W) or rows (N, D), got {tuple(data.shape)}")
    fix_cpu_threads()
    log = CsvLog(shared.out / "train.csv", key_columns=KEYS, columns=COLUMNS)
    common = {"dtype": shared.dtype_name, "device": str(shared.device), "seed": shared.seed,
              "data": config.data or "embedded", **metadata(shared.device)}
    finished = {(r["model"], r["objective"]) for r in log.frame.to_dict("records")
                if str(r.get("last")) == "True" and r.get("dtype") == shared.dtype_name} if len(log.frame) else set()

    def emit(row: dict) -> None:
        row = {**row, **common}
        if not log.done(row):  # a run cut short by a crash is run again; its rows already kept stay as they were
            log.append(row)

    def todo(objectives: tuple[str, ...], model: str) -> tuple[str, ...]:
        kept = tuple(o for o in objectives if (model, o) in finished)
        if kept:
            print(f"train: {model} {', '.join(kept)} already in {log.path}, skipped")
        return tuple(o for o in objectives if o not in kept)

    runs = (("dkef", _run_dkef, "dkef_objectives", {"table": table}),
            ("deep-ebm", _run_ebm, "ebm_objectives", {"images": images}))
    for model, run_model, field, data_kw in runs:
        for objective in todo(getattr(config, field), model):
            one = dataclasses.replace(config, **{field: (objective,)})
            try:
                run_model(one, shared.seed, shared.device, shared.dtype, emit=emit, **data_kw)
            except Exception as err:  # one failed run must not cost the others theirs
                print(f"train: {model} {objective} failed: {type(err).__name__}: {err}")
                emit({"model": model, "objective": objective, "step": 0, "last": True, "status": "error",
                      "message": f"{type(err).__name__}: {err}"})
    rows = log.frame[log.frame["dtype"] == shared.dtype_name] if len(log.frame) else log.frame
    ok = rows[rows.status == "ok"]
    if len(ok):
        final = ok.groupby(["model", "objective"], sort=False).tail(1)[
            ["model", "objective", "step", "nll", "sm_loss", "time_ms_per_step"]]
        write_atomic(final, shared.out / "train_table.csv")
        plot(ok, shared.out / "train.png")
        print("\nfinal held-out metrics (table 1 / table 2 analogue):")
        print(final.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(f"\nwrote {log.path}, {shared.out / 'train_table.csv'} and {shared.out / 'train.png'}")
    return exit_status(rows, "train") if len(rows) else 1


def plan(config: TrainConfig, shared: Shared) -> str:
    _check_dtype(shared)
    runs = [f"dkef {o}" for o in config.dkef_objectives] + [f"deep-ebm {o}" for o in config.ebm_objectives]
    return (f"train: would run {', '.join(runs)} ({config.budget_s:g} s each at most) on "
            f"{config.data or 'the embedded data'} in {shared.dtype_name}, into {shared.out / 'train.csv'}")


COMMAND = Command("train", "Short training runs (DKEF on wine, deep EBM on digits, or --data): held-out SM loss and "
                  "NLL against wall-clock", DEFAULT, run, QUICK, plan)
