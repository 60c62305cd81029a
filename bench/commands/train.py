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
the held-out exact SM metric takes d backward passes), tabular rows feed DKEF; the other model keeps its embedded
data. ``--dtype`` is float32 or float64; it takes no ``--repeats``
(each run trains once). The objectives are those of
the model's recipes, each once. Every check (``_check``: options, the data and its rows, the existing CSV) is made
before any training, by ``--dry-run`` too.

Writes ``train.csv`` through the crash-safe ``CsvLog``, one row per evaluation as it happens (model, objective,
step, wall_s, loss, sm_loss, nll, time_ms_per_step; the run's last row has ``last`` true), each labelled with the
data its run trained on (``data``: the ``--data`` text, or ``embedded``). A run is keyed by model, objective, dtype,
device, seed and data (``RUN_KEYS``): a re-run skips the runs that ended. A run that fails (a non-finite loss, say)
gets an ``error`` row and the others go on; the exit status is then 1. Unlike a sweep's error rows (``--retry``),
an ended run is kept whatever its status, since its rows are a training curve, not one measurement to replace:
moving ``train.csv`` away runs it again. Also
``train_table.csv`` (the final row per run, as in table 1) and ``train.png`` (held-out SM loss against training
wall-clock, a panel per model, as in figure 4).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch import Tensor, nn

from bench.config import Shared, UsageError, option, positive, positive_int, some_of
from bench.csvlog import CsvLog, as_key, check_writable, write_atomic
from bench.data_option import check_data, fit_to_event, read_data
from bench.environment import metadata
from bench.experiment import Command
from bench.plots import save
from bench.sweep import exit_status
from bench.timing import fix_cpu_threads
from fdsm import objectives as obj
from fdsm.data import digits, dkef_split, dkef_split_sizes, sklearn_wine
from fdsm.models import model_config
from fdsm.recipes import RECIPES
from fdsm.training import Record, train

RUN_KEYS = ("model", "objective", "dtype", "device", "seed", "data")  # one training run; "data" as it was used
KEYS = ("model", "objective", "step", *RUN_KEYS[2:])  # one evaluation of a run
COLUMNS = ("wall_s", "loss", "sm_loss", "nll", "time_ms_per_step", "last", "status")
EBM_EVENT = (1, 8, 8)  # the deep EBM's input here: d = 64 backward passes per held-out SM evaluation
EBM_HELD_OUT = 200  # images held out for the deep EBM's SM metric; it trains on the rest
Emit = Callable[[dict], None]


def _objectives(model: str, option_name: str) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    """A ``convert`` hook: objectives of ``model``'s recipes (``fdsm.recipes.RECIPES``); each once, as every list
    option (``bench.config.configure``)."""
    return some_of(option_name, [n.split("/", 1)[1] for n in RECIPES.names(enabled_only=True)
                                 if n.startswith(f"{model}/")])


@dataclass(frozen=True)
class TrainConfig:
    dkef_objectives: tuple[str, ...] = option(("SSM", "SSMVR", "FD-SSM"), "DKEF objectives",
                                              convert=_objectives("dkef", "--dkef-objectives"))
    ebm_objectives: tuple[str, ...] = option(("DSM", "FD-DSM", "SSM", "FD-SSM"), "deep EBM objectives",
                                             convert=_objectives("deep-ebm", "--ebm-objectives"))
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
    held_out, train_x = data[:EBM_HELD_OUT], data[EBM_HELD_OUT:]
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


def _dkef_rows(config: TrainConfig) -> int:
    """The fewest table rows with which DKEF trains: ``dkef_split`` must leave a training set of at least the
    inducing points and a batch."""
    need = max(model_config("dkef", "cpu").n_inducing, config.dkef_batch)
    return next(n for n in itertools.count(need) if dkef_split_sizes(n)[2] >= need)


def _data(config: TrainConfig) -> tuple[Tensor | None, Tensor | None]:
    """``--data`` read and checked: (images, None) for the deep EBM, (None, table) for DKEF, or (None, None)."""
    if config.data is None:
        return None, None
    data = read_data(config.data)  # a bad file: one line
    if data.dim() == 4:
        need, why = EBM_HELD_OUT + config.ebm_batch, f"{EBM_HELD_OUT} held out and a batch of {config.ebm_batch}"
    elif data.dim() == 2:
        need, why = _dkef_rows(config), ("dkef_split holds out a tenth twice; the rest must hold the inducing "
                                         "points and a batch")
    else:
        raise UsageError(f"--data {config.data}: expected images (N, C, H, W) or rows (N, D), got {tuple(data.shape)}")
    if len(data) < need:
        raise UsageError(f"--data {config.data}: {len(data)} rows; train needs at least {need} ({why})")
    return (fit_to_event(data, EBM_EVENT, f"--data {config.data}"), None) if data.dim() == 4 else (None, data)


def _check(config: TrainConfig, shared: Shared) -> tuple[Tensor | None, Tensor | None, CsvLog]:
    """Every check of ``train``, made alike by ``--dry-run`` and a run, before any training: the shared options it
    takes, the data and the existing ``train.csv``. -> (images, table) as ``_data``, and the log."""
    shared.require_full_precision("train runs", "the exact held-out metrics need the precision")
    check_writable(shared.out, make=False)  # a file there, say: before any training
    images, table = _data(config)
    return images, table, CsvLog(shared.out / "train.csv", key_columns=KEYS, columns=COLUMNS)


def _runs(config: TrainConfig, shared: Shared, images: Tensor | None, table: Tensor | None) -> list[dict]:
    """The run keys (``RUN_KEYS``) of this command, each with the data it trains on: ``--data`` for the model of
    its kind, the embedded data for the other."""
    common = {"dtype": shared.dtype_name, "device": str(shared.device), "seed": shared.seed}
    used = {"dkef": table, "deep-ebm": images}
    objectives = {"dkef": config.dkef_objectives, "deep-ebm": config.ebm_objectives}
    return [{"model": model, "objective": objective, **common,
             "data": config.data if used[model] is not None else "embedded"}
            for model in ("dkef", "deep-ebm") for objective in objectives[model]]


def _run_key(row: dict) -> tuple[str, ...]:
    return tuple(as_key(row.get(k)) for k in RUN_KEYS)


def _ended(log: CsvLog) -> dict[tuple[str, ...], str]:
    """The runs of ``log`` that ended (a ``last`` row), with their status: ``ok``, or ``error`` for a run that
    failed, which is kept and not run again (the module docstring)."""
    return {_run_key(r): r["status"] for r in log.frame.to_dict("records") if str(r.get("last")) == "True"}


def _train(key: dict, config: TrainConfig, shared: Shared, log: CsvLog, images: Tensor | None,
           table: Tensor | None) -> None:
    """Train the run ``key`` (``_runs``), its rows into ``log`` as they come; a failure is its ``error`` row."""
    run_model, field, data_kw = {"dkef": (_run_dkef, "dkef_objectives", {"table": table}),
                                 "deep-ebm": (_run_ebm, "ebm_objectives", {"images": images})}[key["model"]]

    def emit(row: dict) -> None:
        row = {**row, **key, **metadata(shared.device)}
        if not log.done(row):  # a run cut short by a crash is run again; its rows already kept stay as they were
            log.append(row)

    try:
        run_model(dataclasses.replace(config, **{field: (key["objective"],)}), shared.seed, shared.device,
                  shared.dtype, emit=emit, **data_kw)
    except Exception as err:  # one failed run must not cost the others theirs
        print(f"train: {key['model']} {key['objective']} failed: {type(err).__name__}: {err}")
        emit({"step": 0, "last": True, "status": "error", "message": f"{type(err).__name__}: {err}"})


def _summarize(log: CsvLog, runs: list[dict], out: Path) -> int:
    """The table and the plot of the ``ok`` rows of ``runs``, and the exit status of their rows."""
    wanted = {_run_key(k) for k in runs}
    rows = log.frame[[_run_key(r) in wanted for r in log.frame.to_dict("records")]] if len(log.frame) else log.frame
    ok = rows[rows.status == "ok"] if len(rows) else rows
    if len(ok):
        final = ok.groupby(["model", "objective"], sort=False).tail(1)[
            ["model", "objective", "step", "nll", "sm_loss", "time_ms_per_step"]]
        write_atomic(final, out / "train_table.csv")
        plot(ok, out / "train.png")
        print("\nfinal held-out metrics (table 1 / table 2 analogue):")
        print(final.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(f"\nwrote {log.path}, {out / 'train_table.csv'} and {out / 'train.png'}")
    return exit_status(rows, "train") if len(rows) else 1


def run(config: TrainConfig, shared: Shared) -> int:
    images, table, log = _check(config, shared)
    check_writable(shared.out)
    fix_cpu_threads()
    runs, ended = _runs(config, shared, images, table), _ended(log)
    for key in runs:
        if _run_key(key) in ended:
            print(f"train: {key['model']} {key['objective']} on {key['data']} already in {log.path} "
                  f"({ended[_run_key(key)]}), skipped; move it away or use another --out to train it again")
        else:
            _train(key, config, shared, log, images, table)
    return _summarize(log, runs, shared.out)


def plan(config: TrainConfig, shared: Shared) -> str:
    images, table, log = _check(config, shared)
    runs, ended = _runs(config, shared, images, table), _ended(log)
    todo = [f"{k['model']} {k['objective']} on {k['data']}" for k in runs if _run_key(k) not in ended]
    return (f"train: would run {', '.join(todo) or 'nothing'} ({config.budget_s:g} s each at most) in "
            f"{shared.dtype_name}, into {log.path}; {len(runs) - len(todo)} of {len(runs)} runs already there")


COMMAND = Command("train", "Short training runs (DKEF on wine, deep EBM on digits, or --data): held-out SM loss and "
                  "NLL against wall-clock", DEFAULT, run, plan, QUICK,
                  ignores=("repeats", "retry"))  # each run trains once; it resumes by run
