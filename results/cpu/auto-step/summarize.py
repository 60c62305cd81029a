"""The done-when tables of issue 18 from the CSVs of run.sh alone: writes summary.md beside them and prints it.

- per dtype, the automatic step with its default stencil (``fdsm.fd_error.default_accuracy``) against the float64
  exact reference, and against the best step of the eps-sweep's grid for the same stencil;
- in float32, the automatic step's error for each stencil measured (p = 2, 4, 6, 8 and the Richardson stencils of
  the defaults), and which of default and Richardson the estimate itself prefers (no reference needed);
- the estimate's factor-3 hit rate over the rows whose measured error is below 100%, and the flags, per dtype;
- the cost: probe forwards and points, time against the same stencil at a fixed step and against exact-taylor.
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # the repository root, for fdsm
from fdsm.fd_error import TOLERANCE, default_accuracy  # noqa: E402

DTYPES = ("float32", "float64", "bfloat16")


def read(pattern: str) -> pd.DataFrame:
    frame = pd.concat([pd.read_csv(path) for path in sorted(HERE.glob(pattern))], ignore_index=True)
    return frame[frame.status == "ok"]


def table(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, floatfmt=".3g")


sweep = read("eps-sweep/eps_sweep.csv")
derivatives = read("auto*/derivatives.csv")
fd_auto = derivatives[derivatives.eps_source == "auto"]
taylor = derivatives[derivatives.method == "exact-taylor"].set_index(["dtype", "order"])
fixed = read("fixed/derivatives.csv")
is_default = [p == default_accuracy(t, getattr(torch, d)) and m == "fd-batched"
              for p, t, d, m in zip(fd_auto.accuracy, fd_auto.order, fd_auto.dtype, fd_auto.method, strict=True)]
default = fd_auto[is_default]


def grid_best(row) -> pd.Series:
    same = sweep[(sweep.method == row.method) & (sweep.order == row.order) & (sweep.accuracy == row.accuracy)
                 & (sweep.dtype == row.dtype)]
    return same.loc[same.rel_error.idxmin()]


lines = ["# Summary of results/cpu/auto-step (written by summarize.py from the CSVs)", ""]

# 1. The default stencils against the float64 exact value and the sweep's best grid step, per dtype.
rows = []
for row in default.itertuples():
    best = grid_best(row)
    rows.append({"dtype": row.dtype, "batch": row.batch, "T": row.order, "p": row.accuracy,
                 "auto step (median)": row.eps, "step min": row.step_min, "step max": row.step_max,
                 "rel_error": row.rel_error, "err_estimate": row.err_estimate, "flagged": row.flagged,
                 "grid best step": best.eps, "grid best rel_error": best.rel_error,
                 "auto / grid best": row.rel_error / best.rel_error})
versus_grid = pd.DataFrame(rows)
versus_grid["dtype"] = pd.Categorical(versus_grid["dtype"], DTYPES)
versus_grid = versus_grid.sort_values(["dtype", "T"])
lines += ["## The automatic step with its default stencil, against the float64 exact value and the sweep's best grid "
          "step (same stencil and dtype)", "", table(versus_grid), ""]
for dtype, group in versus_grid.groupby("dtype", observed=True):
    within = group["auto / grid best"] <= 1.5
    lines.append(f"- {dtype}: within 1.5x of the grid's best step in {int(within.sum())} of {len(group)} orders"
                 + ("" if within.all() else ", not at T = " + ", ".join(map(str, group["T"][~within]))))
lines.append("")

# 2. Float32: the automatic step's error for each stencil, and what the estimate alone would pick.
f32 = fd_auto[fd_auto.dtype == "float32"]
label = [f"{'R' if m.endswith('+richardson') else ''}p={p}" for m, p in zip(f32.method, f32.accuracy, strict=True)]
f32 = f32.assign(stencil=label)
by_stencil = f32.pivot_table(index="order", columns="stencil", values="rel_error")
by_stencil.insert(0, "default p", [default_accuracy(t, torch.float32) for t in by_stencil.index])
by_stencil["smallest"] = by_stencil.drop(columns="default p").idxmin(axis=1)
estimate_by_stencil = f32.pivot_table(index="order", columns="stencil", values="err_estimate")
lines += ["## The automatic step's error by stencil (float32; Rp=q: the Richardson stencil of the default p = q, "
          "accuracy q + 2)", "", "rel_error against the float64 exact value:", "",
          by_stencil.reset_index().rename(columns={"order": "T"}).to_markdown(index=False, floatfmt=".3g"), "",
          "err_estimate (the estimate's own verdict, per stencil):", "",
          estimate_by_stencil.reset_index().rename(columns={"order": "T"}).to_markdown(index=False, floatfmt=".3g"),
          ""]

pair = pd.concat([default[default.dtype == "float32"], f32[f32.method.str.endswith("+richardson")]])
chosen = pair.loc[pair.groupby("order")["err_estimate"].idxmin()]  # what a user without the reference would pick
lines += ["## Richardson where it helps, judged by the estimate alone (float32: the smaller err_estimate of the "
          "default stencil and its Richardson stencil)", "",
          table(chosen[["order", "method", "accuracy", "rel_error", "err_estimate", "flagged"]]
                .rename(columns={"order": "T", "accuracy": "p"})), "",
          "- within 1% at T = 1..4, default stencil: " + ", ".join(
              f"T={t}: {e:.3%}" for t, e in zip(versus_grid[versus_grid.dtype == "float32"]["T"],
                                                versus_grid[versus_grid.dtype == "float32"].rel_error, strict=True)
              if t <= 4),
          "- within 1% at T = 1..4, the estimate's pick: " + ", ".join(
              f"T={t}: {e:.3%}" for t, e in zip(chosen.order, chosen.rel_error, strict=True) if t <= 4), ""]

# 3. The estimate against the measured error, per dtype.
everything = pd.concat([sweep.assign(kind="eps-sweep"), fd_auto.assign(kind="auto step"),
                        fixed.assign(kind="fixed step")]).dropna(subset=["err_estimate"])
hits = []
groups = [*everything.groupby(["dtype", "kind"]), *(((dtype, "all"), frame) for dtype, frame in
                                                    everything.groupby("dtype")), (("all", "all"), everything)]
for (dtype, kind), frame in groups:
    usable = frame[frame.rel_error < 1]
    ratio = usable.err_estimate / usable.rel_error
    within = (ratio >= 1 / 3) & (ratio <= 3)
    hits.append({"dtype": dtype, "rows": kind, "measured error < 100%": len(usable),
                 "estimate within 1/3..3x": int(within.sum()), "hit rate": within.mean() if len(usable) else np.nan,
                 "median estimate / error": ratio.median(), "under 1/3x": int((ratio < 1 / 3).sum()),
                 "over 3x": int((ratio > 3).sum()), "rows at 100% or more": len(frame) - len(usable)})
misses = everything[(everything.rel_error < 1)
                    & ~(everything.err_estimate / everything.rel_error).between(1 / 3, 3)]
lines += ["## The estimate against the measured error (rows whose measured error is below 100%)", "",
          table(pd.DataFrame(hits)), "", "The misses:", "",
          table(misses[["dtype", "kind", "method", "order", "accuracy", "eps", "rel_error", "err_estimate"]]), ""]

# 4. Flags: the estimate's verdict against the measured error.
flagged, above = everything.flagged.astype(bool), everything.rel_error > TOLERANCE
flags = pd.DataFrame({"flagged, above 1%": flagged & above, "flagged, under 1%": flagged & ~above,
                      "not flagged, above 1%": ~flagged & above, "not flagged, under 1%": ~flagged & ~above})
flags = flags.groupby(everything.dtype).sum().reindex(DTYPES)
silent = everything[~flagged & above]
lines += ["## Flags: the estimate's verdict (flagged: err_estimate above 1%) against the measured error, all rows "
          "with an estimate", "", flags.to_markdown(), "", "Rows above 1% that are not flagged:", "",
          table(silent[["dtype", "kind", "method", "order", "accuracy", "eps", "rel_error", "err_estimate"]]), "",
          "Flagged rows of the automatic step with its default stencil:", "",
          table(versus_grid[versus_grid.flagged.astype(bool)][["dtype", "T", "p", "rel_error", "err_estimate"]]), ""]

# 5. The cost of the automatic step with its default stencils.
cost = []
for row in default.itertuples():
    same = fixed[(fixed.order == row.order) & (fixed.accuracy == row.accuracy) & (fixed.dtype == row.dtype)]
    fixed_ms = float(same.time_ms.iloc[0]) if len(same) else np.nan
    taylor_ms = float(taylor.time_ms.get((row.dtype, row.order), np.nan))
    cost.append({"dtype": row.dtype, "T": row.order, "p": row.accuracy, "timed calls": row.repeats,
                 "probe forwards": row.probe_forwards, "probe points / sample": row.probe_points,
                 "auto [ms]": row.time_ms, "fixed step [ms]": fixed_ms, "auto / fixed": row.time_ms / fixed_ms,
                 "exact-taylor [ms]": taylor_ms, "auto / exact-taylor": row.time_ms / taylor_ms,
                 "auto peak [MiB]": row.peak_mem_mb,
                 "exact-taylor peak [MiB]": float(taylor.peak_mem_mb.get((row.dtype, row.order), np.nan))})
cost = pd.DataFrame(cost)
cost["dtype"] = pd.Categorical(cost["dtype"], DTYPES)
lines += ["## The cost of the automatic step with its default stencils (time per call, median of the timed calls)",
          "", table(cost.sort_values(["dtype", "T"])), ""]

text = "\n".join(lines)
(HERE / "summary.md").write_text(text)
print(text)
