"""``fdsm-bench all``: the main job. Every experiment at its default size, into one folder, then ``report.md``.

First ``fit`` trains the deep EBM (``FIGURE2_RECIPE``) on the embedded digits, so that the derivative sweeps
measure a trained model, as the paper's Figure 2 does; if that stage is skipped or fails, they fall back to
random weights, and their CSVs say which (the ``weights`` column). Then ``eps-sweep`` measures FD error against
the step on that model, and ``derivatives`` times FD at the best step it found for each order (``eps_source``).

The stages run in order (``STAGES``), each exactly as its own subcommand would with the same shared options, so a
stage can be re-run alone and a finished row is never measured twice (each command resumes from its CSV). A stage
that fails is reported and the job goes on; the exit status is 1 if any stage failed. ``--device cuda`` runs the
same stages, and each command picks its GPU size (paper-size models) from the device.
"""

from __future__ import annotations

import argparse
import time
import traceback

from bench.cli import UsageError
from bench.commands.fit import checkpoint_path
from bench.report import write_report

NAME = "all"
HELP = "the main job: fit, eps-sweep, derivatives, train-steps and grad-agreement, then report.md"

STAGES = ("fit", "eps-sweep", "derivatives", "train-steps", "grad-agreement")
FIGURE2_RECIPE = "deep-ebm/DSM"  # the paper's deep EBM was trained by (multi-scale) DSM


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip", default="", help=f"comma-separated stages to leave out, of {', '.join(STAGES)}")


def stage_argv(stage: str, args: argparse.Namespace) -> list[str]:
    """The command line that runs ``stage`` with this job's shared options."""
    argv = [stage, "--device", str(args.device), "--out", str(args.out), "--seed", str(args.seed)]
    if args.quick:
        argv.append("--quick")
    if args.repeats is not None:
        argv += ["--repeats", str(args.repeats)]
    checkpoint = checkpoint_path(args.out, FIGURE2_RECIPE)
    if stage == "fit":
        argv += ["--recipe", FIGURE2_RECIPE, "--save", str(checkpoint)]
    elif stage in ("derivatives", "eps-sweep") and checkpoint.is_file():
        argv += ["--checkpoint", str(checkpoint)]
    if stage == "derivatives" and (args.out / "eps_sweep.csv").is_file():
        argv += ["--steps-from", str(args.out / "eps_sweep.csv")]  # FD at the step the sweep found best
    return argv


def run(args: argparse.Namespace) -> int:
    from bench.cli import build_parser  # the parser lists this module: import it when running, not at import

    skipped = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skipped - set(STAGES)
    if unknown:
        raise UsageError(f"--skip {args.skip}: unknown stage(s) {sorted(unknown)}; "
                         f"expected some of {', '.join(STAGES)}")
    stages = [s for s in STAGES if s not in skipped]
    parser = build_parser()
    outcomes: dict[str, str] = {}
    start = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        remaining = ", ".join(stages[i:]) or "report"
        print(f"\n=== [{i}/{len(stages)}] {stage}  (then: {remaining}; {time.perf_counter() - start:.0f} s so far)",
              flush=True)
        stage_args = parser.parse_args(stage_argv(stage, args))
        stage_args.device, stage_args.dtype = args.device, args.dtype
        t0 = time.perf_counter()
        try:
            code = int(stage_args.run(stage_args) or 0)
            outcomes[stage] = "ok" if code == 0 else f"exit status {code}"
        except Exception as err:  # one broken stage must not cost the others their results
            traceback.print_exc()
            outcomes[stage] = f"failed: {type(err).__name__}: {err}"
        print(f"=== {stage}: {outcomes[stage]} in {time.perf_counter() - t0:.0f} s", flush=True)
    command = " ".join(["fdsm-bench", *stage_argv(NAME, args), *(["--skip", args.skip] if args.skip else [])])
    report = write_report(args.out, args.device, command, outcomes, elapsed_s=time.perf_counter() - start)
    print(f"\nwrote {report} ({time.perf_counter() - start:.0f} s in all)")
    return 0 if all(v == "ok" for v in outcomes.values()) else 1
