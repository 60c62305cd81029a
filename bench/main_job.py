"""``fdsm-bench all``: the main job. Every experiment at its default size, into one folder, then ``report.md``.

First ``fit`` trains the deep EBM (``FIGURE2_RECIPE``) on the embedded digits, so that the derivative sweeps
measure a trained model, as the paper's Figure 2 does; if that stage is skipped or fails, they fall back to
random weights, and their CSVs say which (the ``weights`` column). Then ``eps-sweep`` measures FD error against
the step on that model, and ``derivatives`` times FD at the best step it found for each order (``eps_source``).

The stages run in order (``STAGES``), each exactly as its own subcommand would with the same shared options (its
config's preset, ``--quick`` or not, with the stage's few settings; fit in float32 under a half ``--dtype``), so a
stage can be re-run alone and a finished row is not measured again (each command resumes from its CSV; a sweep's
``--retry`` statuses, ``error`` by default, are). A stage that fails is reported and the job goes
on; the exit status is 1 if any stage failed. ``--device cuda`` runs the
same stages, and each command picks its GPU size (paper-size models) from the device.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.commands import fit
from bench.config import Shared, comma_words, option, some_of
from bench.csvlog import check_writable, read_rows
from bench.experiment import Command
from bench.experiments import EXPERIMENTS, experiment
from bench.report import write_report

# fit first, so that the sweeps measure a trained model; then every experiment of the main job, in registry order
STAGES = ("fit", *(e.name for e in EXPERIMENTS if e.in_main_job))
FIGURE2_RECIPE = "deep-ebm/DSM"  # the paper's deep EBM was trained by (multi-scale) DSM


@dataclass(frozen=True)
class AllConfig:
    skip: tuple[str, ...] = option((), f"comma-separated stages to leave out, of {', '.join(STAGES)}",
                                   type=comma_words, convert=some_of("--skip", STAGES), default_text="none")


def stage_command(stage: str) -> Command:
    return fit.COMMAND if stage == "fit" else experiment(stage).command()


def stage_settings(stage: str, shared: Shared) -> dict[str, Any]:
    """The settings of ``stage`` that the job sets: the checkpoint it trains and hands on, the steps it found."""
    checkpoint = fit.checkpoint_path(shared.out, FIGURE2_RECIPE)
    settings: dict[str, Any] = {}
    if stage == "fit":
        settings = {"recipe": FIGURE2_RECIPE}  # into fit's own default path, checkpoint: its messages name --out
    elif stage in ("derivatives", "eps-sweep") and checkpoint.is_file():
        settings = {"checkpoint": checkpoint}
    if stage == "derivatives" and _swept(shared.out / "eps_sweep.csv", shared.dtype_name):
        settings["steps_from"] = shared.out / "eps_sweep.csv"  # FD at the step the sweep found best
    return settings


def _swept(path: Path, dtype: str) -> bool:
    """Whether the job's eps-sweep measured ``dtype`` (it sweeps its own ``--dtypes``, not ``--dtype``): else the
    derivatives stage keeps its default steps, as it would without a sweep."""
    rows = read_rows(path) if path.is_file() else None
    if rows is None or not {"status", "dtype"} <= set(rows):
        return False
    return bool(((rows.status == "ok") & (rows.dtype == dtype)).any())


def stage_shared(stage: str, shared: Shared) -> Shared:
    """The shared options a stage runs with: the job's, but fit trains in float32 where the job's dtype is a half
    one (fit trains in float32 or float64; the sweeps cast its weights to their dtype)."""
    if stage == "fit" and shared.dtype not in (torch.float32, torch.float64):
        return dataclasses.replace(shared, dtype=torch.float32)
    return shared


def stage_config(stage: str, shared: Shared) -> Any:
    command = stage_command(stage)
    preset = command.quick if shared.quick and command.quick is not None else command.default
    overrides = stage_settings(stage, shared)
    if shared.repeats is not None and hasattr(preset, "repeats"):
        overrides["repeats"] = shared.repeats
    return dataclasses.replace(preset, **overrides)


def command_line(shared: Shared, skip: tuple[str, ...]) -> str:
    """The ``fdsm-bench all`` command line that makes this job, for the report."""
    words = ["fdsm-bench", "all", "--device", str(shared.device), "--out", str(shared.out), "--seed", str(shared.seed)]
    words += ["--quick"] * shared.quick + (["--repeats", str(shared.repeats)] if shared.repeats else [])
    words += ["--dtype", shared.dtype_name] * (shared.dtype != Shared().dtype)
    words += ["--retry", ",".join(shared.retry)] * (shared.retry != Shared().retry)
    return " ".join(words + (["--skip", ",".join(skip)] if skip else []))


def run(config: AllConfig, shared: Shared) -> int:
    plan(config, shared)  # every stage's checks before any stage runs (an --out that cannot be written, a CSV of
    # another command where a stage's belongs): each would fail on it alone, after the stages before it had run
    stages = [s for s in STAGES if s not in config.skip]
    outcomes: dict[str, str] = {}
    start = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        remaining = ", ".join(stages[i:]) or "report"
        print(f"\n=== [{i}/{len(stages)}] {stage}  (then: {remaining}; {time.perf_counter() - start:.0f} s so far)",
              flush=True)
        t0 = time.perf_counter()
        try:
            code = int(stage_command(stage).run(stage_config(stage, shared), stage_shared(stage, shared)) or 0)
            outcomes[stage] = "ok" if code == 0 else f"exit status {code}"
        except Exception as err:  # one broken stage must not cost the others their results: one line, and its log
            log = shared.out / "logs" / f"{stage}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
            outcomes[stage] = f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} " \
                              f"(traceback in {log})"
        print(f"=== {stage}: {outcomes[stage]} in {time.perf_counter() - t0:.0f} s", flush=True)
    report = write_report(shared.out, shared.device, command_line(shared, config.skip), outcomes,
                          elapsed_s=time.perf_counter() - start)
    print(f"\nwrote {report} ({time.perf_counter() - start:.0f} s in all)")
    return 0 if all(v == "ok" for v in outcomes.values()) else 1


def plan(config: AllConfig, shared: Shared) -> str:
    """The stages in order, each with its own plan (before fit has run: the sweeps' weights show as random)."""
    check_writable(shared.out, make=False)
    stages = [s for s in STAGES if s not in config.skip]
    first = (", ".join(stages) + ", then report.md" if stages else
             f"every stage skipped: report.md from the CSVs in {shared.out}")
    return "\n".join([f"all: {first}",
                      *(stage_command(s).plan(stage_config(s, shared), stage_shared(s, shared)).splitlines()[0]
                        for s in stages)])


COMMAND = Command("all", "the main job: fit, eps-sweep, derivatives, train-steps and grad-agreement, then report.md",
                  AllConfig(), run, plan=plan)
