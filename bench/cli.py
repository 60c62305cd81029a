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


class _Refused(argparse.Action):
    """A shared option the command has no use for (``Command.ignores``), declared so that argparse neither takes it
    for a prefix of another option (``--dtype`` of ``--dtypes``) nor says only "unrecognized": one line, exit 2."""

    def __call__(self, parser, namespace, values, option_string=None):
        near = [f for a in parser._actions for f in a.option_strings
                if f.startswith(option_string) and f != option_string and a.help != argparse.SUPPRESS]
        hint = f"; did you mean {near[0]}?" if near else ""
        given = option_string if values is None else f"{option_string} {values}"
        parser.error(f"{given}: {parser.prog.removeprefix('fdsm-bench ')} has no use for it and takes no "
                     f"{option_string}{hint} (--help lists its options)")


def _refuse(parser: argparse.ArgumentParser, ignored: tuple[str, ...]) -> None:
    for name in ignored:
        parser.add_argument("--" + name.replace("_", "-"), action=_Refused, nargs="?", dest=f"refused_{name}",
                            help=argparse.SUPPRESS)


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
        add_options(p, Shared, title="shared options", skip=command.ignores)
        _refuse(p, command.ignores)
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
