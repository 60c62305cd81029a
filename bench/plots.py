"""Plot helpers shared by the sweeps: one fixed style per method and per dtype, log-scale line panels, and saving.

Every figure is drawn from the same tidy rows that the CSV holds (``status == "ok"`` rows are plotted; the others
are listed under the figure), so the plot and the table cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# Exact methods are warm colours with solid lines, FD methods cool colours with dashed ones; a variant of either
# (``+compiled``, ``+fused``, ...) takes its base's colour with a hollow marker (``style``).
METHOD_STYLE: Mapping[str, dict] = {
    "exact-reverse": {"color": "#c0392b", "marker": "o", "linestyle": "-"},
    "exact-forward": {"color": "#e67e22", "marker": "s", "linestyle": "-"},
    "exact-taylor": {"color": "#d4ac0d", "marker": "*", "linestyle": "-"},
    "fd-serial": {"color": "#2980b9", "marker": "v", "linestyle": "--"},
    "fd-batched": {"color": "#16a085", "marker": "D", "linestyle": "--"},
    "fd-streams": {"color": "#8e44ad", "marker": "^", "linestyle": "--"},
    "fd-fused": {"color": "#2c3e50", "marker": "P", "linestyle": "--"},
}
DTYPE_STYLE: Mapping[str, dict] = {
    "float64": {"color": "#1f77b4", "marker": "o"},
    "float32": {"color": "#d62728", "marker": "s"},
    "bfloat16": {"color": "#2ca02c", "marker": "^"},
    "float16": {"color": "#9467bd", "marker": "v"},
}


VARIANT_LINES = {"fused": "--"}  # a variant's line; every other variant (``compiled``, ``richardson``) is dotted


def style(name: str, table: Mapping[str, dict]) -> dict:
    """A line's style: its own; for a variant ``<base>+<suffix>`` (``fd-batched+compiled``), its base's colour and
    marker, hollow, on a dotted line (dashed for ``+fused``)."""
    base, _, suffix = name.partition("+")
    if name not in table and base in table:
        return {**table[base], "linestyle": VARIANT_LINES.get(suffix, ":"), "markerfacecolor": "none"}
    return dict(table.get(name, {"marker": "x", "linestyle": ":"}))


def quartile_bar(part: pd.DataFrame, y: str = "time_ms") -> list[np.ndarray] | None:
    """``yerr`` for matplotlib: from the first to the third quartile around the median ``y`` (``time_ms_q1``,
    ``time_ms``, ``time_ms_q3``; ``time_ratio_q1``, ...), so that a skewed spread is drawn skewed; None for a CSV
    written before the quartiles were recorded."""
    low, high = f"{y}_q1", f"{y}_q3"
    if low not in part or high not in part:
        return None
    return [(part[y] - part[low]).clip(lower=0).to_numpy(), (part[high] - part[y]).clip(lower=0).to_numpy()]


def line_panel(ax: Axes, rows: pd.DataFrame, *, x: str, y: str, line: str, styles: Mapping[str, dict],
               logx: bool = False, quartiles: bool = False) -> None:
    """One line per value of ``line`` (in first-seen order): ``y`` against ``x``, log y, positive ok rows only;
    with ``quartiles``, a bar from the first to the third quartile of ``y`` at each point (``y``_q1, ``y``_q3)."""
    ok = rows[(rows.status == "ok") & (rows[y] > 0)]
    for name in rows[line].drop_duplicates():
        part = ok[ok[line] == name].sort_values(x)
        if len(part):
            ax.errorbar(part[x], part[y], yerr=quartile_bar(part, y) if quartiles else None, label=str(name),
                        markersize=5, linewidth=1.6, capsize=3, **style(str(name), styles))
    ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)


def legend(ax: Axes, **kwargs) -> None:
    """The panel's legend where it has labelled lines: none where every case failed (no matplotlib warning)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def failure_note(rows: pd.DataFrame, columns: tuple[str, ...]) -> str:
    """The rows that are not ``ok``, per status, named by ``columns``; rows that differ only in the last column
    share one name with its values listed (``unsupported: exact-reverse+compiled (order 1, 2, 3)``). Empty when
    all are ok."""
    bad = rows[rows.status != "ok"]
    if bad.empty:
        return ""
    *head, last = columns
    parts = []
    for status, part in bad.groupby("status", sort=False):
        names = {}  # the head columns' values -> the last column's, in first-seen order
        for _, r in part.iterrows():
            names.setdefault(" ".join(str(r[c]) for c in head), {})[str(r[last])] = None  # each value once
        who = ", ".join(f"{name} ({last} {', '.join(values)})" if name else f"{last} {', '.join(values)}"
                        for name, values in names.items())
        parts.append(f"{status}: {who}")
    return "not plotted (see the CSV):  " + ";  ".join(parts)


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def finish(fig: Figure, rows, keys: tuple[str, ...], path: Path) -> Path:
    """Name the rows that did not run under the figure (``failure_note``), lay it out tightly and save it."""
    note = failure_note(rows, keys)
    if note:
        fig.text(0.01, -0.03, note, fontsize=7, wrap=True)
    fig.tight_layout()
    return save(fig, path)
