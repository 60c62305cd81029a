"""Markdown pieces of ``report.md`` that each experiment's section uses: tables, figures, the rows that ran."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

TRUSTWORTHY = 0.01  # the paper's "within 1%"


def ok_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"]


def table(frame: pd.DataFrame, floatfmt: str = ".3g") -> str:
    return frame.to_markdown(index=False, floatfmt=floatfmt)


def figure(out: Path, name: str, caption: str) -> str:
    """The figure ``name`` of the folder with its caption, or a line saying it was not written."""
    return f"![{caption}]({name})\n\n*{caption}*\n" if (out / name).exists() else f"*({name} was not written.)*\n"
