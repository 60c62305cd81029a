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
metrics are evaluated every ``eval_every`` steps outside the timed window. Writes ``train.csv`` (one row per
evaluation: model, objective, step, wall_s, loss, sm_loss, nll, time_ms_per_step), ``train_table.csv`` (the final
row per run, as in table 1) and ``train.png`` (held-out SM loss against training wall-clock, a panel per model, as
in figure 4).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch import Tensor, nn

from bench.config import configure
from bench.environment import metadata
from bench.plots import save
from bench.timing import fix_cpu_threads
from fdsm import objectives as obj
from fdsm.data import digits, dkef_split, sklearn_wine
from fdsm.training import RECIPES, Record, train

NAME = "train"
HELP = "Short training runs (DKEF on wine, deep EBM on digits): held-out SM loss and NLL against wall-clock"


@dataclass(frozen=True)
class TrainConfig:
    dkef_objectives: tuple[str, ...] = ("SSM", "SSMVR", "FD-SSM")
    ebm_objectives: tuple[str, ...] = ("DSM", "FD-DSM", "SSM", "FD-SSM")
    dkef_steps: int = 300
    ebm_steps: int = 400
    budget_s: float = 20.0  # training wall-clock per run
    eval_every: int = 50
    ebm_lr: float = 1e-3
    ebm_batch: int = 64
    dkef_batch: int = 100  # the 145 training rows of sklearn wine cannot fill the paper's 200
    is_samples: int = 100_000  # importance samples for log Z
    ebm_width: int = 8


DEFAULT = TrainConfig()
QUICK = dataclasses.replace(DEFAULT, dkef_objectives=("FD-SSM",), ebm_objectives=("FD-DSM",), dkef_steps=2,
                            ebm_steps=2, eval_every=2, is_samples=1000, ebm_width=2, ebm_batch=16, dkef_batch=40)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("train")
    g.add_argument("--budget", dest="budget_s", type=float, help="training seconds per run (default: 20)")
    g.add_argument("--ebm-lr", dest="ebm_lr", type=float, help="deep EBM learning rate (default: 1e-3)")
    g.add_argument("--eval-every", dest="eval_every", type=int, help="steps between evaluations (default: 50)")


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


def _run_dkef(config: TrainConfig, seed: int, device: torch.device) -> list[dict]:
    split = dkef_split(sklearn_wine(), seed=seed)
    train_x, held_out = split["train"].to(device), torch.cat([split["val"], split["test"]]).to(device)
    rows = []
    for objective in config.dkef_objectives:
        torch.manual_seed(seed)
        recipe = dataclasses.replace(RECIPES.get(f"dkef/{objective}"), batch=config.dkef_batch)
        model = recipe.build_model("cpu", dim=train_x.shape[1]).to(device)
        model.init_inducing(train_x)
        g = torch.Generator().manual_seed(seed)  # the training batches
        g_eval = torch.Generator().manual_seed(seed + 1)  # alpha's directions and the importance samples

        def evaluate(model: nn.Module = model, g_eval: torch.Generator = g_eval) -> dict:
            # Its own generator, so that how often it runs changes neither the training batches nor the draws of
            # the training steps (the global generator).
            v = (torch.randint(0, 2, train_x.shape, generator=g_eval) * 2 - 1).to(train_x)  # Rademacher
            model.fit_alpha(train_x, v)
            return {"sm_loss": held_out_sm(model.log_density, held_out),
                    "nll": dkef_nll(model, held_out, config.is_samples, g_eval)}

        rows += _records("dkef", objective, model, recipe, train_x, config, config.dkef_steps, evaluate, g)
    return rows


def _run_ebm(config: TrainConfig, seed: int, device: torch.device) -> list[dict]:
    data = digits((1, 8, 8))
    data = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))].to(device)
    held_out, train_x = data[:200], data[200:]
    rows = []
    for objective in config.ebm_objectives:
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)  # every objective sees the same batches, however far others ran
        base = RECIPES.get(f"deep-ebm/{objective}")
        recipe = dataclasses.replace(base, batch=config.ebm_batch,
                                     optim=dataclasses.replace(base.optim, lr=config.ebm_lr))
        model = recipe.build_model("cpu", image_size=8, n_chan=config.ebm_width).to(device)

        def evaluate(model: nn.Module = model) -> dict:
            return {"sm_loss": held_out_sm(model.log_density, held_out), "nll": math.nan}

        rows += _records("deep-ebm", objective, model, recipe, train_x, config, config.ebm_steps, evaluate, g)
    return rows


def _records(model_name: str, objective: str, model: nn.Module, recipe, data: Tensor, config: TrainConfig,
             steps: int, evaluate, g: torch.Generator) -> list[dict]:
    metrics: list[dict] = []

    def on_record(record: Record) -> None:
        print(f"{model_name:9s} {objective:8s} step {record.step:4d}  {record.wall_s:6.1f}s  loss {record.loss:+.4g}"
              f"  held-out SM {metrics[-1]['sm_loss']:+.4g}  NLL {metrics[-1]['nll']:.4g}", flush=True)

    records = train(model, recipe, data, steps=steps, evaluate=lambda: metrics.append(evaluate()) or 0.0,
                    eval_every=config.eval_every, generator=g, time_budget_s=config.budget_s, on_record=on_record)
    return [{"model": model_name, "objective": objective, "step": r.step, "wall_s": r.wall_s, "loss": r.loss,
             **m, "time_ms_per_step": 1e3 * r.wall_s / r.step, "batch": recipe.batch, "lr": recipe.optim.lr,
             "status": "ok"} for r, m in zip(records, metrics, strict=True)]


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


def run(args: argparse.Namespace) -> int:
    config = configure(args, DEFAULT, QUICK)
    fix_cpu_threads()
    rows = pd.DataFrame(_run_dkef(config, args.seed, args.device) + _run_ebm(config, args.seed, args.device))
    rows = rows.assign(dtype="float32", device=str(args.device), **metadata(args.device))
    args.out.mkdir(parents=True, exist_ok=True)
    rows.to_csv(args.out / "train.csv", index=False)
    table = rows.groupby(["model", "objective"], sort=False).tail(1)[
        ["model", "objective", "step", "nll", "sm_loss", "time_ms_per_step"]]
    table.to_csv(args.out / "train_table.csv", index=False)
    plot(rows, args.out / "train.png")
    print("\nfinal held-out metrics (table 1 / table 2 analogue):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nwrote {args.out / 'train.csv'}, {args.out / 'train_table.csv'} and {args.out / 'train.png'}")
    return 0
