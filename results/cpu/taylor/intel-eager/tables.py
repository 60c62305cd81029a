"""The README's table of this folder's run, and its growth line: per batch and T, fd-batched's time, the paired
time ratios to it (median [quartiles] of the per-round ratios, ``time_ratio``), reverse / taylor both as the ratio
of the two paired ratios and of the rows' median times, and the errors.

    PYTHONPATH=. python results/cpu/taylor/intel-eager/tables.py
"""

from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent

print("| batch | T | fd-batched ms | exact-taylor / fd | exact-reverse / fd | reverse / taylor (paired) | (medians) "
      "| taylor error | FD error |")
print("|---|---|---|---|---|---|---|---|---|")
for batch in (2, 64):
    rows = pd.read_csv(HERE / f"batch{batch}" / "derivatives.csv")
    rows = rows[rows.status == "ok"].set_index(["method", "order"])
    for order in sorted(rows.index.get_level_values("order").unique()):
        fd, taylor, reverse = (rows.loc[(m, order)] for m in ("fd-batched", "exact-taylor", "exact-reverse"))
        print(f"| {batch} | {order} | {fd.time_ms:.3g} | {taylor.time_ratio:.2f} [{taylor.time_ratio_q1:.2f}, "
              f"{taylor.time_ratio_q3:.2f}] | {reverse.time_ratio:.3g} | {reverse.time_ratio / taylor.time_ratio:.3g}x "
              f"| {reverse.time_ms / taylor.time_ms:.3g}x | {taylor.rel_error:.1e} | {fd.rel_error:.2%} |")
growth = rows.time_ms.xs(6, level="order") / rows.time_ms.xs(1, level="order")  # the last batch's rows: 64
print(f"\nbatch 64, T = 6 / T = 1: taylor {growth['exact-taylor']:.3g}x, fd {growth['fd-batched']:.3g}x, "
      f"ratio {growth['exact-taylor'] / growth['fd-batched']:.3g}")
