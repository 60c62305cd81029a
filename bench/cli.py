"""The ``fdsm-bench`` command line: shared options, device resolution, and dispatch to ``bench.commands``.

Usage errors (an unknown dtype, ``--device cuda`` on a machine without a GPU) print one line and exit with status
2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

from bench.environment import use_ieee_float32

# Subcommand modules, in the order ``fdsm-bench --help`` lists them.
COMMANDS: tuple[str, ...] = (
    "bench.commands.all",
    "bench.commands.compare",
    "bench.commands.derivatives",
    "bench.commands.eps_sweep",
    "bench.commands.fit",
    "bench.commands.models",
    "bench.commands.train_steps",
    "bench.commands.flops",
    "bench.commands.grad_agreement",
    "bench.commands.train",
    "bench.commands.kernels",
)

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UsageError(Exception):
    """A problem with what the user asked for; reported as one line, exit status 2."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without a GPU is a UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device {name}: {err}; expected auto, cpu or cuda[:N]") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"--device {name}: no CUDA device is visible to torch {torch.__version__} "
            f"(CUDA build: {torch.version.cuda or 'no'}); use --device cpu or --device auto"
        )
    return device


def dtype_name(dtype: torch.dtype) -> str:
    """The CLI's name of a dtype, as the CSVs record it: torch.float32 -> "float32"."""
    return next(name for name, d in DTYPES.items() if d == dtype)


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"--dtype {name}: expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def common_options() -> argparse.ArgumentParser:
    """The options every subcommand takes (DESIGN.md, 'CLI')."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("shared options")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    g.add_argument("--dtype", default="float32", help=f"one of {', '.join(DTYPES)} (default: float32)")
    g.add_argument("--out", type=Path, default=Path("results/local"), help="output folder (default: results/local)")
    g.add_argument("--quick", action="store_true", help="CI size: tiny models, few orders, few repeats")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default: per command)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fdsm-bench",
        description="The cost of T-th order derivatives, exact versus finite differences, and of score-matching "
        "training steps (Pang et al., NeurIPS 2020).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parent = common_options()
    for module_name in COMMANDS:
        module = importlib.import_module(module_name)
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP, parents=[parent])
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_ieee_float32()  # the in-process parts; every worker does the same at start
    try:
        args.device = resolve_device(args.device)
        args.dtype = resolve_dtype(args.dtype)
        if args.repeats is not None and args.repeats < 1:
            raise UsageError(f"--repeats {args.repeats}: expected at least 1")
        return int(args.run(args) or 0)
    except UsageError as err:
        print(f"fdsm-bench {args.command}: error: {err}", file=sys.stderr)
        return 2
