"""The README's table of this folder's run: per batch and T, every row's paired time ratio to its FD baseline
(median [quartiles] of the per-round ratios, ``time_ratio``), and reverse / taylor as the ratio of two of them.

    PYTHONPATH=. python results/cpu/taylor/harness-paired/tables.py
"""

from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
COLUMNS = {"exact-taylor": "taylor / fd", "exact-taylor+fused": "fused / fd",
           "exact-taylor+compiled": "compiled taylor / compiled fd", "exact-reverse": "reverse / fd"}

print("| batch | T | " + " | ".join(COLUMNS.values()) + " | reverse / taylor | reverse / fused |")
print("|--:|--:|" + "--:|" * (len(COLUMNS) + 2))
for batch in (2, 64):
    rows = pd.read_csv(HERE / f"batch{batch}" / "derivatives.csv").set_index(["method", "order"])
    for order in sorted(rows.index.get_level_values("order").unique()):
        cells = []
        for method in COLUMNS:
            r = rows.loc[(method, order)]
            cells.append(f"{r.time_ratio:.2f} [{r.time_ratio_q1:.2f}, {r.time_ratio_q3:.2f}]")
        ratio = rows.time_ratio.xs(order, level="order")
        derived = [f"{ratio['exact-reverse'] / ratio[m]:.1f}x" for m in ("exact-taylor", "exact-taylor+fused")]
        print(f"| {batch} | {order} | " + " | ".join(cells + derived) + " |")
