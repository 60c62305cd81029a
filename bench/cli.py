"""The ``fdsm-bench`` command line: one subcommand per experiment (``bench.experiments``) and per tool
(``bench.commands``) and the main job (``bench.main_job``), each with the options of its config dataclass.

Usage errors (an unknown dtype, ``--device cuda`` on a machine without a GPU, a bad value of any option) print one
line and exit with status 2 before any work starts, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from bench import main_job
from bench.commands import COMMANDS
from bench.config import SHARED_OPTIONS, Shared, UsageError, add_options, configure
from bench.environment import prepare_process
from bench.experiment import Command
from bench.experiments import EXPERIMENTS
from fdsm.data import DataFormatError
from fdsm.training import NonFiniteLossError


def commands() -> list[Command]:
    """Every subcommand, in the order ``fdsm-bench --help`` lists them: the main job, the experiments, the tools."""
    return [main_job.COMMAND, *(e.command() for e in EXPERIMENTS), *COMMANDS]


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (the option, the value and what is allowed) and exit status 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fdsm-bench",
        description="The cost of T-th order derivatives, exact versus finite differences, and of score-matching "
        "training steps (Pang et al., NeurIPS 2020).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for command in commands():
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        add_options(p, type(command.default), quick=command.quick, title=command.name, skip=SHARED_OPTIONS)
        add_options(p, Shared, title="shared options", skip=command.ignores)  # an ignored one: argparse's exit 2
        p.set_defaults(command_object=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: Command = args.command_object
    prepare_process()  # the in-process parts; every worker does the same at start
    try:
        shared = configure(args, Shared())
        config = configure(args, command.default, command.quick)
        if shared.dry_run:
            print(command.plan(config, shared))
            return 0
        return int(command.run(config, shared) or 0)
    except (UsageError, DataFormatError) as err:  # one line, whatever a library's message embedded in it holds
        print(f"fdsm-bench {command.name}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:  # a run that diverged: what happened and what to try, in one line
        print(f"fdsm-bench {command.name}: failed: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # stdout's reader left (``| head``): stop quietly, as a process killed by SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit would fail
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:  # outside a sweep (which says how much it kept): every finished row is on disk
        print(f"fdsm-bench {command.name}: interrupted; the rows written so far are kept, and running the same "
              "command again resumes", file=sys.stderr)
        return 130
