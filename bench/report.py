"""``report.md``: the figures, the headline ratios and the environment of one result folder.

Every number in the report is read from the folder's CSVs, and every ratio is taken between rows of one run
(DESIGN.md: ratios beat absolutes). A CSV that is missing, or a stage that failed, gets a line saying so instead
of a section; rows whose status is not ``ok`` are listed with their message at the end. A CSV that holds several
runs (another dtype or size written to the same folder) is summarized by its newest run (``newest_run``), and the
environment table gives the metadata of the rows summarized, not of the process that writes the report.

Headline ratios:
- derivatives: for each T, exact time / FD time and exact peak memory / FD peak memory, for the exact methods
  against ``fd-batched``, and the FD error at the default step;
- eps-sweep: per dtype, order and stencil accuracy, the step with the smallest error and that error;
- train-steps: for each model, the FD objective's speed-up and memory saving over its gradient-based twin
  (``FD-SSM`` and the serial ``FD-SSM*`` over ``SSM``, and so on: ``bench.commands.train_steps.speedups``);
- grad-agreement: the cosine between FD and exact parameter gradients at each step.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from bench.commands.grad_agreement import KEYS as GRAD_AGREEMENT_KEYS
from bench.commands.train_steps import KEYS as TRAIN_STEPS_KEYS
from bench.commands.train_steps import speedups as train_step_speedups
from bench.csvlog import as_key
from bench.derivative_case import CASE_KEYS
from bench.environment import METADATA_COLUMNS, metadata

FD_BASELINE = "fd-batched"
TRUSTWORTHY = 0.01  # the paper's "within 1%"


def _read(out: Path, name: str) -> pd.DataFrame | None:
    path = out / name
    return pd.read_csv(path) if path.exists() and path.stat().st_size else None


# Per CSV: the key columns that vary within one run (a section's axes); every other key column (``KEYS`` of the
# command) is the run's configuration. A folder may hold several runs (another checkpoint, dtype, size or
# float32_math written to the same --out): the report summarizes the newest run only, so that every ratio in it is
# taken between rows measured under one configuration.
SECTION_AXES = {
    "derivatives.csv": ("method", "order", "eps"),  # the step is chosen per order (and per method with --steps-from)
    "eps_sweep.csv": ("dtype", "order", "accuracy", "eps"),
    "train_steps.csv": ("model", "objective", "batch", "memory_format"),  # batch and layout are chosen per model
    "grad_agreement.csv": ("model", "pair", "dtype", "eps"),
}
SECTION_KEYS = {
    "derivatives.csv": CASE_KEYS,
    "eps_sweep.csv": CASE_KEYS,
    "train_steps.csv": TRAIN_STEPS_KEYS,
    "grad_agreement.csv": GRAD_AGREEMENT_KEYS,
}


def newest_run(frame: pd.DataFrame, keys: tuple[str, ...], axes: tuple[str, ...]) -> tuple[pd.DataFrame, int]:
    """The rows of the newest run in ``frame`` and how many rows were left out: those whose configuration (the
    ``keys`` that are not ``axes``) differs from the newest row's, and, of the rest, all but the newest row per
    ``axes`` (newest by ``timestamp``, else file order)."""
    ordered = frame.sort_values("timestamp", kind="stable") if "timestamp" in frame else frame
    config = [k for k in keys if k in frame and k not in axes]
    as_text = ordered[config].map(as_key)  # as the CSV's keys compare: an empty cell (NaN) equals an empty cell
    run = ordered[(as_text == as_text.iloc[-1]).all(axis=1)]
    run = run.drop_duplicates([a for a in axes if a in frame], keep="last")
    return run, len(frame) - len(run)


def _configuration(run: pd.DataFrame, keys: tuple[str, ...], axes: tuple[str, ...]) -> str:
    return ", ".join(f"{k} {run[k].iloc[0]}" for k in keys if k in run and k not in axes)


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"]


def _table(frame: pd.DataFrame, floatfmt: str = ".3g") -> str:
    return frame.to_markdown(index=False, floatfmt=floatfmt)


def _figure(out: Path, name: str, caption: str) -> str:
    return f"![{caption}]({name})\n\n*{caption}*\n" if (out / name).exists() else f"*({name} was not written.)*\n"


def derivatives_section(frame: pd.DataFrame, out: Path) -> str:
    ok = _ok(frame)
    time = ok.pivot_table(index="order", columns="method", values="time_ms")
    memory = ok.pivot_table(index="order", columns="method", values="peak_mem_mb")
    error = ok.pivot_table(index="order", columns="method", values="rel_error")
    rows = pd.DataFrame({"T": time.index})
    for exact in ("exact-reverse", "exact-forward", "exact-taylor"):
        if exact in time and FD_BASELINE in time:
            rows[f"time {exact} / {FD_BASELINE}"] = (time[exact] / time[FD_BASELINE]).to_numpy()
            rows[f"memory {exact} / {FD_BASELINE}"] = (memory[exact] / memory[FD_BASELINE]).to_numpy()
    for method in error.columns:
        if method.startswith("fd-") or method == "exact-taylor":  # FD's error beside the strongest exact method's
            rows[f"rel. error {method}"] = error[method].to_numpy()
    if "eps" in ok:
        steps = ok[ok.method == FD_BASELINE].groupby("order")["eps"].first()
        rows["FD step eps"] = steps.reindex(time.index).to_numpy()
    inaccurate = [int(t) for t, e in error.get(FD_BASELINE, pd.Series(dtype=float)).items() if e > TRUSTWORTHY]
    caveat = (f"\n**{FD_BASELINE} is more than {TRUSTWORTHY:.0%} off the exact value at T = "
              f"{', '.join(map(str, inaccurate))}** in this dtype, even at the step used (see the step-size "
              "section): FD is cheap there, but not accurate.\n" if inaccurate else "")
    return "\n".join([
        "## Figure 2: the T-th directional derivative, exact versus FD",
        _figure(out, "figure2.png", "Time, peak memory and error against the order T, one line per method (log y)."),
        "Ratios of one run (above 1: FD is cheaper); error against the float64 exact reference. Taylor mode "
        "(`exact-taylor`) is the strongest exact method: its ratio is FD's real advantage, at its error:\n",
        _table(rows),
        caveat,
        "\nTime per method [ms], median of repeats:\n",
        _table(time.reset_index()),
    ])


def eps_sweep_section(frame: pd.DataFrame, out: Path) -> str:
    ok = _ok(frame).dropna(subset=["rel_error"])
    best = ok.loc[ok.groupby(["dtype", "order", "accuracy"])["rel_error"].idxmin()]
    best = best[["dtype", "order", "accuracy", "eps", "rel_error"]].rename(
        columns={"eps": "best step eps", "rel_error": "smallest rel. error"})
    return "\n".join([
        "## Step size: where FD is trustworthy",
        _figure(out, "eps_sweep.png", "Relative error against the step |v|, per dtype and stencil accuracy; "
                                      "the dashed lines mark the theoretical optimum step."),
        "The step with the smallest error, per dtype, order and accuracy:\n",
        _table(best.sort_values(["dtype", "order", "accuracy"])),
    ])


def train_steps_section(frame: pd.DataFrame, out: Path) -> str:
    speedups = train_step_speedups(frame).rename(columns={
        "speedup": "speed-up (median)", "speedup_q1": "q1", "speedup_q3": "q3", "flop_ratio": "FLOP ratio",
        "memory_ratio": "memory ratio", "versus_taylor": "strongest exact", "speedup_taylor": "speed-up over it",
        "speedup_taylor_q1": "its q1", "speedup_taylor_q3": "its q3"}).dropna(axis=1, how="all")  # e.g. no FLOPs
    return "\n".join([
        "## Training steps: FD objectives against their gradient-based twins",
        _figure(out, "train_steps.png", "Time and peak memory of one complete optimizer step per objective."),
        "Above 1: the objective is faster / smaller / does less arithmetic than its nested-autograd counterpart "
        "(`versus`). The speed-up is the median and quartiles of the per-round time ratios, the objectives timed "
        "alternately in one worker; the FLOP ratio compares their model FLOPs per step (convolutions and matmuls, "
        "`bench.flops`). A `-Taylor` row is the same exact objective by Taylor mode; an FD row's speed-up over "
        "it (`strongest exact`) is FD's advantage over the strongest exact step:\n",
        _table(speedups) if len(speedups) else "*(no FD objective with a twin in this run)*",
    ])


def grad_agreement_section(frame: pd.DataFrame, out: Path) -> str:
    ok = _ok(frame)
    value = "cosine" if "cosine" in ok else ok.select_dtypes("number").columns[-1]
    index = [c for c in ("model", "pair", "objective", "dtype") if c in ok]
    table = ok.pivot_table(index=index, columns="eps", values=value).reset_index()
    table.columns = [c if isinstance(c, str) else f"eps={c:g}" for c in table.columns]
    return "\n".join([
        "## Gradient agreement (Lemma 2): FD against exact parameter gradients",
        _figure(out, "grad_agreement.png", "Cosine between FD and exact parameter gradients against the step."),
        _table(table, floatfmt=".5f"),
    ])


def problems_section(frames: dict[str, pd.DataFrame]) -> str:
    """Rows whose status is not ok, one line per file, status and message, with what they were."""
    lines = []
    for name, frame in frames.items():
        bad = frame[frame["status"] != "ok"].fillna({"message": ""})
        for (status, message), group in bad.groupby(["status", "message"], sort=False):
            what = "; ".join(f"{c}: {', '.join(map(str, group[c].unique()))}"
                             for c in ("model", "method", "objective", "order", "dtype") if c in group)
            lines.append(f"- `{name}`, {len(group)} row(s) **{status}** ({what}): {message}")
    return "\n".join(["## Rows that did not run", *(lines or ["Every row ran (status ok)."])])


def environment(frames: dict[str, pd.DataFrame], device: torch.device) -> dict[str, str]:
    """The metadata of the summarized rows (``METADATA_COLUMNS``), every distinct value of each, and the span of
    their timestamps; a column that no CSV holds comes from this process (``bench.environment.metadata``)."""
    env = {k: str(v) for k, v in metadata(device).items()}
    for column in METADATA_COLUMNS:
        values = sorted({str(v) for f in frames.values() if column in f for v in f[column].dropna()})
        if values and column == "timestamp":
            env[column] = values[0] if len(values) == 1 else f"{values[0]} to {values[-1]}"
        elif values:
            env[column] = ", ".join(values)
    return env


SECTIONS: dict[str, Callable[[pd.DataFrame, Path], str]] = {
    "derivatives.csv": derivatives_section,
    "eps_sweep.csv": eps_sweep_section,
    "train_steps.csv": train_steps_section,
    "grad_agreement.csv": grad_agreement_section,
}


def write_report(out: Path, device: torch.device, command: str, outcomes: dict[str, str], elapsed_s: float) -> Path:
    """Write ``out/report.md`` from the CSVs in ``out`` and return its path; ``command`` is what made them."""
    frames, older = {}, {}
    for name in SECTIONS:
        if (frame := _read(out, name)) is not None:
            frames[name], older[name] = newest_run(frame, SECTION_KEYS[name], SECTION_AXES[name])
    env = environment(frames, device)
    parts = [
        "# fdsm-bench report",
        f"`{command}` on {env['device_name']}, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {elapsed_s / 60:.1f} min.\n",
        _table(pd.DataFrame({"stage": list(outcomes), "outcome": list(outcomes.values())})),
    ]
    for name, section in SECTIONS.items():
        if name in frames:
            try:
                parts.append(section(frames[name], out))
                if older[name]:
                    parts.append(f"*{name} also holds {older[name]} row(s) of earlier runs into this folder or of "
                                 "other configurations; only the newest run is summarized ("
                                 f"{_configuration(frames[name], SECTION_KEYS[name], SECTION_AXES[name])}).*")
            except (KeyError, ValueError) as err:  # a CSV of an unexpected shape: say so, keep the rest
                parts.append(f"## {name}\n*Could not summarize {name}: {type(err).__name__}: {err}*")
        else:
            parts.append(f"## {name}\n*Not in this folder: the stage did not run or wrote nothing.*")
    parts.append(problems_section(frames))
    parts.append("## Environment\n\n" + _table(pd.DataFrame({"": list(env), "value": list(env.values())})))
    parts.append("Ratios are taken between rows of this one run; absolute times depend on the machine and its "
                 "load. CPU peak memory is the resident-set high-water mark of a worker process above its "
                 "baseline; CUDA peak memory is the allocator's peak above the model and inputs.")
    path = out / "report.md"
    path.write_text("\n\n".join(parts) + "\n")
    return path
