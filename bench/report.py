"""``report.md``: the figures, the headline ratios and the environment of one result folder.

Every number in the report is read from the folder's CSVs, and every ratio is taken between rows of one run
(DESIGN.md: ratios beat absolutes). A CSV that is missing, or a stage that failed, gets a line saying so instead
of a section; rows whose status is not ``ok`` are listed with their message at the end. A CSV that holds several
runs (another dtype or size written to the same folder) is summarized by its newest run (``newest_run``), and the
environment table gives the metadata of the rows summarized, not of the process that writes the report.

Each section is the ``report`` of an experiment in ``bench.experiments`` (its headline ratios: exact / FD time and
memory per T, the best FD step, the training steps' speed-ups, the gradient cosines), in the registry's order;
``axes`` says which of its key columns vary within one run.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pandas as pd
import torch

from bench.csvlog import as_key, read_rows
from bench.environment import METADATA_COLUMNS, metadata
from bench.experiments import EXPERIMENTS
from bench.markdown import table


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


def write_report(out: Path, device: torch.device, command: str, outcomes: dict[str, str], elapsed_s: float) -> Path:
    """Write ``out/report.md`` from the CSVs in ``out`` and return its path; ``command`` is what made them."""
    sections = [e for e in EXPERIMENTS if e.report is not None]
    frames, older, foreign = {}, {}, {}
    for e in sections:
        if (frame := read_rows(out / e.csv, e.aliases)) is None:
            continue
        if lacking := [c for c in ("status", *e.keys) if c not in frame]:  # another command's or version's CSV
            foreign[e.csv] = lacking
        else:
            frames[e.csv], older[e.csv] = newest_run(frame, e.keys, e.axes)
    env = environment(frames, device)
    parts = [
        "# fdsm-bench report",
        f"`{command}` on {env['device_name']}, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {elapsed_s / 60:.1f} min.\n",
        table(pd.DataFrame({"stage": list(outcomes), "outcome": list(outcomes.values())})),
    ]
    for e in sections:
        if e.csv in foreign:
            parts.append(f"## {e.csv}\n*Not summarized: {out / e.csv} lacks the column(s) {foreign[e.csv]}, so it "
                         "was not written by this command (another command's or version's file).*")
            continue
        if e.csv not in frames:
            parts.append(f"## {e.csv}\n*Not in this folder: the stage did not run or wrote nothing.*")
            continue
        try:
            parts.append(e.report(frames[e.csv], out))
            if older[e.csv]:
                parts.append(f"*{e.csv} also holds {older[e.csv]} row(s) of earlier runs into this folder or of "
                             "other configurations; only the newest run is summarized ("
                             f"{_configuration(frames[e.csv], e.keys, e.axes)}).*")
        except (KeyError, ValueError) as err:  # a CSV of an unexpected shape: say so, keep the rest
            parts.append(f"## {e.csv}\n*Could not summarize {e.csv}: {type(err).__name__}: {err}*")
    parts.append(problems_section(frames))
    parts.append("## Environment\n\n" + table(pd.DataFrame({"": list(env), "value": list(env.values())})))
    parts.append("Ratios are taken between rows of this one run; absolute times depend on the machine and its "
                 "load. CPU peak memory is the resident-set high-water mark of a worker process above its "
                 "baseline; CUDA peak memory is the allocator's peak above the model and inputs.")
    path = out / "report.md"
    path.write_text("\n\n".join(parts) + "\n")
    return path
