"""Typed configuration: the names every command shares, and CLI options generated from config dataclasses.

A command's (or experiment's) configuration is a frozen dataclass whose fields are its options. A field declared
with ``option(default, help, ...)`` becomes one command-line option, ``--field-name`` (dest = the field name,
default None), whose help text ends with the field's default and, where it differs, the ``--quick`` preset's: each
default is written once, in the dataclass. ``configure(args, default, quick)`` picks the preset from ``--quick``
and replaces exactly the fields given on the command line; each option's ``convert`` hook then checks the value
(and may turn it into a richer object), raising ``UsageError`` for one line and exit status 2.

The shared options (``--device``, ``--dtype``, ``--out``, ``--quick``, ``--seed``, ``--repeats``) are the fields of
``Shared``; a command's own config may hold a field of the same name (``repeats``), which the shared option sets.

    >>> @dataclasses.dataclass(frozen=True)
    ... class Toy:
    ...     orders: tuple[int, ...] = option((1, 2, 3), "orders T")
    ...     eps: float | None = option(None, "FD step", default_text="per order")
    >>> parser = argparse.ArgumentParser()
    >>> add_options(parser, Toy, quick=Toy(orders=(1,)))
    >>> configure(parser.parse_args(["--orders", "2,4"]), Toy(), Toy(orders=(1,)))
    Toy(orders=(2, 4), eps=None)
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch

C = TypeVar("C")

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UsageError(Exception):
    """A problem with what the user asked for; reported as one line, exit status 2."""


def dtype_name(dtype: torch.dtype) -> str:
    """The CLI's name of a dtype, as the CSVs record it: torch.float32 -> "float32"."""
    return next(name for name, d in DTYPES.items() if d == dtype)


def check_step_in_range(option: str, eps: float, dtype: torch.dtype, remedy: str = "") -> None:
    """A UsageError where the step |v| = eps given by ``option`` is not a normal number of the dtype: v overflows,
    or underflows to 0 (a row of |v| = 0 that no FD method can run)."""
    info = torch.finfo(dtype)
    if not info.tiny <= eps <= info.max:
        raise UsageError(f"{option} {eps:g}: outside {dtype_name(dtype)}'s normal range ({info.tiny:.3g} to "
                         f"{info.max:.3g}), where the direction v of that length is 0 or infinite; choose a step in "
                         f"it{remedy}")


# ---- argparse types -------------------------------------------------------------------------------------------

def _items(text: str, example: str) -> list[str]:
    """The comma-separated items of ``text``, none of them empty (``1,,2``, ``""`` and ``1,2,`` are typos)."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated values such as {example}, got {text!r}, which "
                                         "has an empty item")
    return parts


def comma_ints(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> (1, 2, 3); argparse ``type=`` for a list of orders."""
    try:
        return tuple(int(part) for part in _items(text, "1,2,3"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,3, got {text!r}") from None


def comma_floats(text: str) -> tuple[float, ...]:
    """``"0.5,8"`` -> (0.5, 8.0)."""
    try:
        return tuple(float(part) for part in _items(text, "0.5,8"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.5,8, got {text!r}") from None


def comma_words(text: str) -> tuple[str, ...]:
    """``"fd-batched, exact-reverse"`` -> ("fd-batched", "exact-reverse")."""
    return tuple(_items(text, "a,b"))


def output_folder(text: str) -> Path:
    """argparse ``type=`` for ``--out``: a folder path; an empty one (``--out ""``, a variable unset in a script)
    would put the results in the current directory unasked, so it is refused (``.`` says so on purpose)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a folder path, got {text!r} (write . for the current folder)")
    return Path(text)


def positive_int(text: str) -> int:
    """argparse ``type=`` for a count that must be at least 1 (threads, steps)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# The argparse type of a field, from its annotation (``X | None`` is X's).
PARSERS: dict[Any, Callable[[str], Any]] = {
    int: int, float: float, str: str, Path: Path,
    tuple[int, ...]: comma_ints, tuple[float, ...]: comma_floats, tuple[str, ...]: comma_words,
}


def option(default: Any, help: str, *, flag: str | None = None, aliases: tuple[str, ...] = (),
           type: Callable[[str], Any] | None = None, choices: tuple[str, ...] | None = None,
           convert: Callable[[Any], Any] | None = None, default_text: str | None = None,
           positional: bool = False, repeats: bool = False) -> Any:
    """A dataclass field that is also a command-line option (see the module docstring).

    ``flag`` replaces the generated ``--field-name``; ``aliases`` are further accepted spellings (old flags);
    ``type`` replaces the parser inferred from the annotation; ``convert(value)`` runs after parsing (and on the
    preset's default), returning the value to keep or raising ``UsageError``; ``default_text`` describes a default
    that the code resolves later (``None`` meaning "per device", say); ``positional`` makes a required argument.
    The items of a list option are distinct (``--orders 1,1`` is refused, a sweep would run its cases twice), but
    for one with ``repeats``: a sequence such as a shape, ``1,28,28``.
    """
    meta = {"help": help, "flag": flag, "aliases": aliases, "type": type, "choices": choices, "convert": convert,
            "default_text": default_text, "positional": positional, "repeats": repeats}
    return dataclasses.field(default=default, metadata=meta)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) if value else "all"
    return "none" if value is None else str(value)


def _annotation(cls: type, name: str) -> Any:
    kind = typing.get_type_hints(cls)[name]
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


def options_of(cls: type) -> list[dataclasses.Field]:
    """The fields of a config dataclass that are command-line options."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def add_options(parser: argparse.ArgumentParser, cls: type, *, quick: Any = None, title: str | None = None,
                skip: tuple[str, ...] = ()) -> None:
    """One option per ``option`` field of ``cls`` (not those named in ``skip``), in declaration order."""
    group = parser.add_argument_group(title) if title else parser
    for f in options_of(cls):
        if f.name in skip:
            continue
        meta, kind = f.metadata, _annotation(cls, f.name)
        shown = meta["default_text"] or _show(f.default)
        if quick is not None and getattr(quick, f.name) != f.default:
            shown += f"; --quick: {_show(getattr(quick, f.name))}"
        text = f"{meta['help']} (default: {shown})".replace("%", "%%")
        if meta["positional"]:
            group.add_argument(f.name, type=meta["type"] or PARSERS[kind], help=meta["help"])
            continue
        flags = [meta["flag"] or "--" + f.name.replace("_", "-"), *meta["aliases"]]
        if kind is bool:
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            group.add_argument(*flags, dest=f.name, action=action, default=None, help=text)
        else:
            metavar = None if meta["choices"] else flags[0].lstrip("-").replace("-", "_").upper()
            group.add_argument(*flags, dest=f.name, default=None, help=text, choices=meta["choices"],
                               type=meta["type"] or PARSERS[kind], metavar=metavar)


def _refuse_repeats(flag: str, values: tuple) -> None:
    """A UsageError where an item of a list option's parsed ``values`` repeats (``1,01`` as well as ``1,1``)."""
    twice = [v for i, v in enumerate(values) if v in values[:i]]
    if twice:
        raise UsageError(f"{flag} {_show(values)}: {twice[0]} given twice; give each item once")


def configure(args: argparse.Namespace, default: C, quick: C | None = None) -> C:
    """The preset (``quick`` under ``--quick``) with every option field that ``args`` sets (not None) replaced,
    then each field's ``convert`` hook applied (a ``UsageError`` names the bad value)."""
    preset = quick if quick is not None and getattr(args, "quick", False) else default
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(preset)
             if getattr(args, f.name, None) is not None}
    for f in options_of(type(preset)):
        if isinstance(value := given.get(f.name), tuple) and not f.metadata["repeats"]:
            _refuse_repeats(f.metadata["flag"] or "--" + f.name.replace("_", "-"), value)
    config = dataclasses.replace(preset, **given)
    converted = {f.name: f.metadata["convert"](getattr(config, f.name)) for f in options_of(type(config))
                 if f.metadata["convert"] is not None}
    return dataclasses.replace(config, **converted)


# ---- the shared options ---------------------------------------------------------------------------------------

def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without a GPU is a UsageError."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device {name}: {err}; expected auto, cpu or cuda[:N]") from err
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index is not None):
        raise UsageError(f"--device {name}: not a device the suite measures on (its clocks and memory probes know "
                         "the CPU and CUDA); expected auto, cpu or cuda[:N]")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"--device {name}: no CUDA device is visible to torch {torch.__version__} "
            f"(CUDA build: {torch.version.cuda or 'no'}); use --device cpu or --device auto"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise UsageError(f"--dtype {name}: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


# ---- convert hooks: each kind of value is checked in one place ---------------------------------------------------

def positive(option_name: str) -> Callable[[float | None], float | None]:
    """A ``convert`` hook: the value must be a positive finite number (not NaN); None (unset) passes."""
    def check(value: float | None) -> float | None:
        if value is not None and not 0 < value < float("inf"):
            raise UsageError(f"{option_name} {value}: expected a positive finite number")
        return value

    return check


def positives(option_name: str) -> Callable[[tuple[float, ...]], tuple[float, ...]]:
    """A ``convert`` hook for a list: at least one value, every one a positive finite number (orders, sizes)."""
    def check(values: tuple[float, ...]) -> tuple[float, ...]:
        bad = [v for v in values if not 0 < v < float("inf")]
        if not values or bad:
            shown = ",".join(map(str, values)) or "(empty)"
            raise UsageError(f"{option_name} {shown}: expected positive values, e.g. 1,2,3"
                             + (f"; {bad} are not" if bad else ""))
        return values

    return check


# The largest order T and stencil accuracy p the options take: the tests check every method to T = 6 and the stencils
# to p = 8; past these the stencils' weights grow beyond what float64 resolves (an OverflowError at p = 400, after a
# sweep had run half a minute) and nested reverse mode grows as 2^T.
MAX_ORDER = 12
MAX_ACCURACY = 16


def bounded_orders(option_name: str) -> Callable[[tuple[int, ...]], tuple[int, ...]]:
    """A ``convert`` hook for orders T: ``positives``, each at most ``MAX_ORDER``."""
    def check(values: tuple[int, ...]) -> tuple[int, ...]:
        positives(option_name)(values)
        if high := [t for t in values if t > MAX_ORDER]:
            raise UsageError(f"{option_name} {','.join(map(str, values))}: expected orders 1 to {MAX_ORDER}; "
                             f"{high} are higher")
        return values

    return check


def at_least(option_name: str, low: int) -> Callable[[int], int]:
    """A ``convert`` hook: an integer of at least ``low`` (e.g. untimed warm-up calls: 0 or more)."""
    def check(value: int) -> int:
        if value < low:
            raise UsageError(f"{option_name} {value}: expected an integer >= {low}")
        return value

    return check


def central_accuracies(option_name: str) -> Callable[[Any], Any]:
    """A ``convert`` hook: stencil accuracies p (one or a list) must be even and at least 2 (central stencils,
    Theorem 1)."""
    def check(value: Any) -> Any:
        values = value if isinstance(value, tuple) else (value,)
        bad = [p for p in values if p < 2 or p % 2 or p > MAX_ACCURACY]
        if not values or bad:
            raise UsageError(f"{option_name}: {bad} are not central-stencil accuracies; expected even p from 2 to "
                             f"{MAX_ACCURACY}, e.g. 2 or 4")
        return value

    return check


SEED_RANGE = (-(2**63), 2**63 - 1)  # what torch.manual_seed takes


def _seed(value: int) -> int:
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise UsageError(f"--seed {value}: expected an integer that fits in 64 bits")
    return value


def some_of(option_name: str, allowed: Iterable[str]) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    """A ``convert`` hook: every name of a list option must be one of ``allowed``."""
    allowed = tuple(allowed)

    def check(names: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise UsageError(f"{option_name} {','.join(names)}: unknown {unknown}; expected some of "
                             f"{', '.join(allowed)}")
        return names

    return check


def _at_least_one(option_name: str) -> Callable[[int | None], int | None]:
    def check(value: int | None) -> int | None:
        if value is not None and value < 1:
            raise UsageError(f"{option_name} {value}: expected at least 1")
        return value

    return check


# ---- the deep EBM's width: --n-chan ----------------------------------------------------------------------------

QUICK_N_CHAN = 2  # --quick's n_chan for the models that have one (the deep EBM): CI's 2 cores, and a quick fit's


def n_chan_setting(n_chan: int | None, model: str, settings: Iterable[str], quick: bool) -> int | None:
    """The n_chan to build ``model`` with: ``--n-chan``'s value, else ``QUICK_N_CHAN`` under ``--quick`` where the
    model has an n_chan, else None (the preset's). ``--n-chan`` given for a model without one (its preset's fields
    are ``settings``) is a UsageError, not a value silently dropped."""
    settings = sorted(settings)
    if n_chan is not None and "n_chan" not in settings:
        raise UsageError(f"--n-chan {n_chan}: {model} has no n_chan; its settings are {', '.join(settings)}")
    return QUICK_N_CHAN if n_chan is None and quick and "n_chan" in settings else n_chan


# The statuses of a kept row that ``--retry`` can name: a row ``ok`` is always kept (move the CSV away to measure
# it again); ``error`` is retried by default, since the cause (a bug, a file) may be gone.
RETRIED = ("error", "timeout", "oom", "unsupported")


@dataclasses.dataclass(frozen=True)
class Shared:
    """The options every command takes (DESIGN.md, 'CLI'), but those it has no use for (``Command.ignores``:
    ``--dtype`` where it takes ``--dtypes``, ``--repeats`` where nothing is timed); ``device`` and ``dtype`` arrive
    resolved."""

    device: torch.device = option("auto", "auto | cpu | cuda[:N]", type=str, convert=resolve_device)
    dtype: torch.dtype = option("float32", f"one of {', '.join(DTYPES)}", type=str, convert=resolve_dtype)
    out: Path = option(Path("results/local"), "output folder", type=output_folder)
    quick: bool = option(False, "CI size: tiny models, few orders, few repeats")
    seed: int = option(0, "random seed", convert=_seed)
    repeats: int | None = option(None, "timed repeats per measurement", default_text="per command",
                                 convert=_at_least_one("--repeats"))
    retry: tuple[str, ...] = option(("error",), "the statuses of rows already in the CSV that a sweep measures "
                                    "again, replacing them", convert=some_of("--retry", RETRIED))
    dry_run: bool = option(False, "check the options and list what would run (the cases, and which are already "
                           "in the CSV), then stop")

    def __post_init__(self):  # resolved however it is made: by the CLI, by a test, by the main job
        object.__setattr__(self, "device", resolve_device(self.device))
        object.__setattr__(self, "dtype", resolve_dtype(self.dtype))

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    def require_full_precision(self, does: str, why: str) -> None:
        """A UsageError unless ``--dtype`` is float32 or float64: ``does`` says what the command does in them,
        ``why`` why half precision cannot serve."""
        if self.dtype not in (torch.float32, torch.float64):
            raise UsageError(f"--dtype {self.dtype_name}: {does} in float32 or float64 ({why})")


SHARED_OPTIONS = tuple(f.name for f in dataclasses.fields(Shared))
