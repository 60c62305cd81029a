"""The done-when table of issue 18 from the CSVs of run.sh alone: writes summary.md beside them and prints it.

- the automatic step (fd-batched, and Richardson on p = 2) against the float64 exact reference, and against the
  best step of the eps-sweep's grid for the same stencil;
- which of the two the estimate itself prefers (the smaller err_estimate: no reference needed), and its error;
- the estimate's factor-3 hit rate over the rows whose measured error is below 100%, and the flagged rows;
- the cost: probe forwards and points, time against the same stencil at a fixed step and against exact-taylor.
"""

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def read(name: str) -> pd.DataFrame:
    frame = pd.read_csv(HERE / name)
    return frame[frame.status == "ok"]


sweep = pd.concat([read("eps-sweep/eps_sweep.csv"), read("eps-sweep-richardson/eps_sweep.csv")])
auto = pd.concat([read("auto/derivatives.csv"), read("auto-richardson/derivatives.csv")])
fixed = read("fixed/derivatives.csv")
fd_auto = auto[auto.eps_source == "auto"]
taylor = auto[auto.method == "exact-taylor"].set_index("order")


def grid_best(method: str, order: int, accuracy: int) -> pd.Series:
    rows = sweep[(sweep.method == method) & (sweep.order == order) & (sweep.accuracy == accuracy)]
    return rows.loc[rows.rel_error.idxmin()]


lines = ["# Summary of results/cpu/auto-step (written by summarize.py from the CSVs)", ""]
table = []
for row in fd_auto.itertuples():
    best = grid_best(row.method, row.order, row.accuracy)
    table.append({"T": row.order, "method": row.method, "p": row.accuracy, "auto step (median)": row.eps,
                  "rel_error": row.rel_error, "err_estimate": row.err_estimate, "flagged": row.flagged,
                  "grid best step": best.eps, "grid best rel_error": best.rel_error,
                  "auto / grid best": row.rel_error / best.rel_error})
table = pd.DataFrame(table).sort_values(["T", "method"])
lines += ["## The automatic step against the float64 exact value and the sweep's best grid step (same stencil)", "",
          table.to_markdown(index=False, floatfmt=".3g"), ""]

chosen = table.loc[table.groupby("T")["err_estimate"].idxmin()]  # what a user without the reference would pick
lines += ["## Richardson where it helps, judged by the estimate alone (the smaller err_estimate per T)", "",
          chosen[["T", "method", "rel_error", "err_estimate", "auto / grid best"]].to_markdown(index=False,
                                                                                                floatfmt=".3g"),
          "", "- within 1% at T = 1..4: " + ", ".join(f"T={t}: {e:.2%}" for t, e in
                                                    zip(chosen["T"], chosen.rel_error, strict=True) if t <= 4),
          f"- within 1.5x of the grid's best step, every row above: {int((table['auto / grid best'] <= 1.5).sum())} "
          f"of {len(table)}", ""]

fd_rows = pd.concat([fd_auto, fixed])
estimated = {"eps-sweep rows": sweep, "derivatives rows (auto and fixed step)": fd_rows}
hits = []
for name, frame in {**estimated, "all": pd.concat([sweep, fd_rows])}.items():
    usable = frame[(frame.rel_error < 1) & frame.err_estimate.notna()]
    ratio = usable.err_estimate / usable.rel_error
    within = (ratio >= 1 / 3) & (ratio <= 3)
    hits.append({"rows": name, "with measured error < 100%": len(usable), "estimate within 1/3..3x": int(within.sum()),
                 "hit rate": within.mean(), "median estimate / error": ratio.median(),
                 "under 1/3x": int((ratio < 1 / 3).sum()), "over 3x": int((ratio > 3).sum())})
lines += ["## The estimate against the measured error", "", pd.DataFrame(hits).to_markdown(index=False, floatfmt=".3g"),
          ""]

everything = pd.concat([sweep, fd_rows])
flags = pd.crosstab(everything.flagged.astype(bool), everything.rel_error > 0.01,
                    rownames=["flagged (estimate > 1%)"], colnames=["measured error > 1%"])
lines += ["## Flags: the estimate's verdict against the measured error (all rows with an estimate)", "",
          flags.to_markdown(), "", "Flagged rows of the automatic step:", "",
          fd_auto[fd_auto.flagged.astype(bool)][["method", "order", "accuracy", "eps", "rel_error", "err_estimate"]]
          .to_markdown(index=False, floatfmt=".3g"), ""]

cost = []
for row in fd_auto.itertuples():
    same = fixed[(fixed.order == row.order) & (fixed.accuracy == row.accuracy) & (fixed.method == row.method)]
    fixed_ms = float(same.time_ms.iloc[0]) if len(same) else np.nan
    taylor_ms = float(taylor.time_ms.get(row.order, np.nan))
    cost.append({"T": row.order, "method": row.method, "probe forwards": row.probe_forwards,
                 "probe points / sample": row.probe_points, "auto [ms]": row.time_ms, "fixed step [ms]": fixed_ms,
                 "auto / fixed": row.time_ms / fixed_ms, "exact-taylor [ms]": taylor_ms,
                 "auto / exact-taylor": row.time_ms / taylor_ms})
lines += ["## The cost of the automatic step (time per call, median of 5, batch 64)", "",
          pd.DataFrame(cost).sort_values(["T", "method"]).to_markdown(index=False, floatfmt=".3g"), ""]

text = "\n".join(lines)
(HERE / "summary.md").write_text(text)
print(text)
