"""Typed sweep configurations: a frozen dataclass of defaults, a ``--quick`` preset, and checked CLI overrides.

A command declares ``DEFAULT`` and ``QUICK`` (``dataclasses.replace`` of a few fields of ``DEFAULT``) and adds one
option per overridable field, with ``dest`` equal to the field name and ``default=None``. ``configure(args,
DEFAULT, QUICK)`` picks the preset from ``--quick`` and replaces exactly the fields given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TypeVar

C = TypeVar("C")


def comma_ints(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> (1, 2, 3); argparse ``type=`` for a list of orders."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,3, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse ``type=`` for a count that must be at least 1 (threads, steps)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def comma_words(text: str) -> tuple[str, ...]:
    """``"fd-batched, exact-reverse"`` -> ("fd-batched", "exact-reverse")."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def configure(args: argparse.Namespace, default: C, quick: C) -> C:
    """The preset (``quick`` under ``--quick``) with every field that ``args`` sets (not None) replaced."""
    preset = quick if args.quick else default
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(preset)
             if getattr(args, f.name, None) is not None}
    return dataclasses.replace(preset, **given)
