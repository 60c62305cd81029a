"""The tables of README.md (beside this file), from the CSVs of one run of run.sh and the paired script.

    PYTHONPATH=. python results/cpu/taylor/tables.py > /tmp/tables.md
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
TAYLOR, FUSED, COMPILED = "exact-taylor", "exact-taylor+fused", "exact-taylor+compiled"
REVERSE, FD, FD_COMPILED = "exact-reverse", "fd-batched", "fd-batched+compiled"


def ms(value: float) -> str:
    return f"{value:,.3g}" if value >= 1 else f"{value:.3g}"


def ratio(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value:.2f}"


def error(value: float) -> str:
    return f"{100 * value:.2g}%" if value >= 1e-3 else f"{value:.1e}"


def markdown(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("--:" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def figure2(batch: int) -> str:
    """The eager methods, and the fused rules, of one derivatives.csv: times, the ratios, memory and errors."""
    frame = pd.read_csv(HERE / f"batch{batch}" / "derivatives.csv")
    frame = frame[frame.status == "ok"]
    time, memory, err = (frame.pivot_table(index="order", columns="method", values=v)
                         for v in ("time_ms", "peak_mem_mb", "rel_error"))
    rows = [[str(t), ms(time[REVERSE][t]), ms(time[TAYLOR][t]), ms(time[FUSED][t]), ms(time[FD][t]),
             f"{time[REVERSE][t] / time[TAYLOR][t]:.1f}x", f"{time[REVERSE][t] / time[FUSED][t]:.1f}x",
             ratio(time[TAYLOR][t] / time[FD][t]), ratio(time[FUSED][t] / time[FD][t]),
             ratio(memory[TAYLOR][t] / memory[FD][t]), error(err[TAYLOR][t]), error(err[FUSED][t]),
             error(err[FD][t])] for t in time.index]
    return markdown(rows, ["T", "exact-reverse [ms]", "exact-taylor [ms]", "+fused [ms]", "fd-batched [ms]",
                           "reverse / taylor", "reverse / fused", "taylor / fd-batched", "fused / fd-batched",
                           "memory taylor / fd-batched", "taylor rel. error", "fused rel. error",
                           "fd-batched rel. error"])


def compiled(batch: int) -> str:
    """The compiled rows of one derivatives.csv, and the compile times (the fused rules' too)."""
    frame = pd.read_csv(HERE / f"batch{batch}" / "derivatives.csv")
    frame = frame[frame.status == "ok"]
    time, compile_ms = (frame.pivot_table(index="order", columns="method", values=v)
                        for v in ("time_ms", "compile_ms"))
    rows = [[str(t), ms(time[COMPILED][t]), ms(time[FD_COMPILED][t]), ratio(time[COMPILED][t] / time[FD_COMPILED][t]),
             f"{compile_ms[COMPILED][t] / 1e3:.1f} / {compile_ms[FD_COMPILED][t] / 1e3:.1f}",
             f"{compile_ms[FUSED][t] / 1e3:.1f}"] for t in time.index]
    return markdown(rows, ["T", "compiled taylor [ms]", "compiled fd-batched [ms]", "compiled taylor / fd",
                           "compile taylor / fd [s]", "compile fused [s]"])


def paired() -> str:
    """paired.csv: the median paired ratio [quartiles] per (batch, T), and each method's median time."""
    frame = pd.read_csv(HERE / "paired" / "paired.csv")

    def quartiles(row: pd.Series, stem: str) -> str:
        if pd.isna(row.get(stem)):
            return "n/a"
        return f"{row[stem]:.2f} [{row[stem + '_q1']:.2f}, {row[stem + '_q3']:.2f}]"

    stems = ["taylor_over_fd", "fused_taylor_over_fd", "compiled_taylor_over_fd", "reverse_over_taylor",
             "reverse_over_fused_taylor"]
    methods = [TAYLOR, FUSED, FD, COMPILED, FD_COMPILED]
    rows = [[str(r.batch), str(r.order), *(quartiles(r, s) for s in stems),
             *(ms(r[f"time_ms_{m}"]) for m in methods)] for _, r in frame.iterrows()]
    return markdown(rows, ["batch", "T", "taylor / fd-batched", "fused / fd-batched", "compiled: taylor / fd-batched",
                           "reverse / taylor", "reverse / fused", "taylor [ms]", "fused [ms]", "fd-batched [ms]",
                           "compiled taylor [ms]", "compiled fd-batched [ms]"])


if __name__ == "__main__":
    for batch in (2, 64):
        print(f"Batch {batch} (`batch{batch}/derivatives.csv`), eager and fused:\n\n{figure2(batch)}\n")
        print(f"Batch {batch}, compiled (evaluations under `torch.no_grad`):\n\n{compiled(batch)}\n")
    print(f"Paired (`paired/paired.csv`, median paired ratio [quartiles over the rounds]):\n\n{paired()}")
