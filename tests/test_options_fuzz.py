"""Random values thrown at every command's options (hypothesis): a clean exit 2 with one line, or acceptance; never
a traceback. In-process, with ``--dry-run``, so that nothing runs past the checks: about 20 examples per command."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import build_parser, commands, main

# Values a user might type, the troublesome ones first: non-numbers, NaN, infinities, signs, empty lists, names
# that are almost right, a user model and a data file that do not exist.
WORDS = ["nan", "inf", "-inf", "-1", "0", "1", "2", "3", "1e309", "-0.5", "1e-3", "0.1", "1,2", "0,1", "1,,2", ",",
         "", "x", "fd-batched", "fd-batchd", "exact-taylor", "float8", "float64", "bfloat16", "paper", "cpu",
         "nice", "resnet", "SSM,FD-SSM", "FD-SMM", "a.py:f", "examples/user_model.py:nope", "no.such.module:f",
         "mnist", "mnist:nofile.gz", "imagenet", "deep-ebm/DSM", "fit", "bogus", "2,4", "3", "-2,2", "1,2,3,4,5,6,7"]
VALUES = st.one_of(st.sampled_from(WORDS), st.integers(-5, 50).map(str),
                   st.text(alphabet="0123456789,-.:aex", max_size=6))
SKIPPED = {"help", "command_object", "device", "out", "dry_run"}  # set by the test itself


def _actions(name: str) -> list:
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    return sub.choices[name]._actions


def _options(name: str) -> list:
    return [a for a in _actions(name) if a.dest not in SKIPPED and a.option_strings]


def _argv(name: str):
    options = _options(name)

    @st.composite
    def argv(draw):
        chosen = draw(st.lists(st.sampled_from(options), max_size=4, unique_by=lambda a: a.dest)) if options else []
        words = []
        for action in chosen:
            flag = draw(st.sampled_from(action.option_strings))
            words += [flag] if action.nargs == 0 else [flag, draw(VALUES)]
        return words

    return argv()


@pytest.mark.parametrize("name", [c.name for c in commands()])
def test_random_option_values_are_accepted_or_refused_in_one_line(name):
    folder = Path(tempfile.mkdtemp(prefix="fdsm-fuzz-"))
    positional = [str(folder), str(folder)] if name == "compare" else []
    takes = {a.dest for a in _actions(name)}  # compare takes no --device and no --out
    shared = [*(["--device", "cpu"] if "device" in takes else []),
              *(["--out", str(folder / "out")] if "out" in takes else [])]

    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(argv=_argv(name))
    def check(argv):
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main([name, *positional, *argv, "--dry-run", *shared])
            except SystemExit as stop:  # argparse's own refusals
                code = stop.code
        message = err.getvalue()
        assert code in (0, 2), (argv, code, message)
        assert "Traceback" not in message, (argv, message)
        if code == 2:
            assert len(message.strip().splitlines()) == 1, (argv, message)
        assert not list(folder.glob("out/*.csv")), argv  # a dry run measures nothing

    check()
