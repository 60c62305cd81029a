"""``--model package.module:factory`` and ``--model path/to/file.py:factory``: a user's model from the command line.

The contract the factory's module follows (what ``forward`` returns, ``interface``, ``event_shape``) is written down
once, in ``fdsm.models.user``. This module turns a spec into a checked ``UserModel``:

    >>> is_user_model("examples/user_model.py:make_model"), is_user_model("mlp-ebm")
    (True, False)
    >>> model = build_user_model("examples/user_model.py:make_model")  # doctest: +SKIP
    >>> model.interface, model.event_shape                              # doctest: +SKIP
    ('energy', (16,))

``factory`` is any callable the module defines (a function or a class), called with no arguments; a dotted name
(``pkg.mod:Builder.make``) walks attributes. Every problem is a ``bench.config.UsageError`` of one line that starts
``--model SPEC:`` and says what went wrong: no such file or module, the import raised (its exception's first line),
no such attribute (with some callables the module does define), not callable, the factory raised or returned
something other than an ``nn.Module``, or the model breaks the contract (``check_user_model``).

NOTE [a user's file gets a name derived from its path]: ``path/file.py`` is imported as the module
``fdsm_user_<stem>_<8 hex digits of sha1(absolute path)>``, registered in ``sys.modules``. The name is the same in
every process, so a spawned benchmark worker that calls ``build_user_model(spec)`` again gets the same module name,
and objects whose classes live in the file pickle between the two processes. The file's directory is not put on
``sys.path``: a file that imports its neighbours should be a package on ``PYTHONPATH`` and use
``package.module:factory``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from torch import nn

from bench.config import UsageError, option
from bench.results import DIGEST_HEX, DIGEST_PREFIX
from fdsm.models.user import UserModel, UserModelError, check_user_model

_SHOWN_CALLABLES = 8  # how many of a module's callables an "no such attribute" error lists


def is_user_model(spec: str) -> bool:
    """Whether ``--model spec`` names a user's factory (``module:factory``, ``file.py:factory``) rather than a
    registered model; registered names never contain ``":"``."""
    return ":" in spec


def event_shape_option() -> tuple[int, ...] | None:
    """The ``--event-shape`` field of a config that may run a user's model (``refuse_event_shape`` checks it)."""
    return option(None, "a user model's input shape, e.g. 1,28,28", repeats=True,
                  default_text="the model's event_shape attribute")


def refuse_event_shape(event_shape: tuple[int, ...] | None, models: tuple[str, ...]) -> None:
    """``--event-shape`` is a user model's input shape: a UsageError where none of ``models`` is a user's."""
    if event_shape is not None:
        refuse_for_registered(f"--event-shape {','.join(map(str, event_shape))}", "input shape", models)


def refuse_for_registered(given: str, what: str, models: tuple[str, ...]) -> None:
    """An option of a user's model only (``given``: the option and its value): a UsageError where none of
    ``models`` is a user's, since the registered ones have their own ``what``."""
    if not any(map(is_user_model, models)):
        own = "declares its" if len(models) == 1 else "declare their"
        raise UsageError(f"{given}: a user model's {what}; {', '.join(models)} {own} own")


def _one_line(err: BaseException) -> str:
    """``"TypeName: first line of the message"``."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _file_module_name(path: Path) -> str:
    """See NOTE [a user's file gets a name derived from its path]."""
    stem = re.sub(r"\W", "_", path.stem)
    return f"fdsm_user_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def _import_file(spec: str, target: str) -> ModuleType:
    path = Path(target).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"--model {spec}: no such file {target} (looked for {path})")
    if path.suffix != ".py":
        raise UsageError(f"--model {spec}: {target} is not a Python file; expected path/to/file.py:factory")
    name = _file_module_name(path)
    if name in sys.modules:  # loaded before in this process (see the NOTE)
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before exec, as the import system does: dataclasses and pickle look it up
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:  # a script that parses sys.argv at import exits
        del sys.modules[name]
        raise UsageError(f"--model {spec}: importing {target} raised {_one_line(err)}") from err
    return module


def _import_module(spec: str, target: str) -> ModuleType:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        if err.name is not None and (target == err.name or target.startswith(err.name + ".")):
            local = Path(*target.split(".")).with_suffix(".py")
            if local.is_file():  # a console script does not put the current directory on sys.path
                hint = (f"; ./{local.as_posix()} exists but the current directory is not on sys.path: pass --model "
                        f"{local.as_posix()}:{spec.rpartition(':')[2]} or set PYTHONPATH=.")
            else:
                hint = "; is it installed or on PYTHONPATH? a file is given as path/to/file.py:factory"
            raise UsageError(f"--model {spec}: no module named {err.name!r}{hint}") from err
        raise UsageError(f"--model {spec}: importing {target} raised {_one_line(err)}") from err
    except (Exception, SystemExit) as err:
        raise UsageError(f"--model {spec}: importing {target} raised {_one_line(err)}") from err


def _callables(module: ModuleType) -> list[str]:
    """The public callables ``module`` defines (those it imports if it defines none), sorted."""
    public = {name: obj for name, obj in vars(module).items()
              if not name.startswith("_") and callable(obj) and not isinstance(obj, ModuleType)}
    own = [name for name, obj in public.items() if getattr(obj, "__module__", None) == module.__name__]
    return sorted(own or public)


@functools.cache
def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The factory that ``--model spec`` names: ``"pkg.mod:name"`` (importlib) or ``"path/file.py:name"``.

    A file is imported under a name derived from its path (see NOTE [a user's file gets a name derived from its
    path]). Cached per spec: loading it again is a dictionary lookup (``load_factory.cache_clear()`` forgets).
    Raises ``UsageError``, one line naming ``--model`` and the spec, for a malformed spec, no such file or module,
    an import that raised, no such attribute or a value that is not callable.
    """
    target, _, attribute = spec.rpartition(":")
    if not target or not attribute or not all(part.isidentifier() for part in attribute.split(".")):
        raise UsageError(f"--model {spec}: expected package.module:factory or path/to/file.py:factory, with a "
                         "factory name after the last ':'")
    module = _import_file(spec, target) if _is_file_target(target) else _import_module(spec, target)
    obj: object = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            names = _callables(module)
            shown = ", ".join(names[:_SHOWN_CALLABLES]) + (f", ... ({len(names)} in all)"
                                                          if len(names) > _SHOWN_CALLABLES else "")
            raise UsageError(f"--model {spec}: {target} has no attribute {attribute!r}; "
                             + (f"its callables: {shown}" if names else "it defines no callables"))
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"--model {spec}: {target}'s {attribute} is not callable (type {type(obj).__name__}); name a "
                         "function or class that builds the nn.Module")
    return obj


def model_source(spec: str) -> str:
    """The ``model_source`` column of a user's model: the digest of the file that defines its factory
    (``sha256:`` and 16 hex digits). The rows of ``--model spec`` are keyed by the spec, so an edit of that file (a
    wider layer, another activation) would have resumed on the rows of the network before the edit; ``CsvLog``
    measures a kept row again where its ``model_source`` is not today's (``identity``). A file that the factory's
    file imports is not read: after editing one, use another ``--out``."""
    factory = load_factory(spec)
    try:
        path = inspect.getsourcefile(factory)
    except TypeError:  # a callable object, a functools.partial: its module's file
        path = None
    path = path or getattr(sys.modules.get(getattr(factory, "__module__", "")), "__file__", None)
    if path is None or not Path(path).is_file():  # no file to read (a builtin, a C extension)
        return ""
    return DIGEST_PREFIX + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:DIGEST_HEX]


def build_user_model(spec: str, event_shape: tuple[int, ...] | None = None, *, trains: bool = False) -> UserModel:
    """``factory()`` for ``--model spec``, wrapped in ``UserModel`` and checked by ``check_user_model``.

    ``event_shape`` (``--event-shape``) is for a module that does not declare one; if it does, the two must agree.
    ``trains`` says that the command trains the model (train-steps), which then needs a parameter that requires
    grad; the derivative sweeps take a model without parameters. Each call builds a fresh model (new parameters);
    only the loading is cached. Raises ``UsageError``: ``"--event-shape ..."`` for a size below 1
    (``check_event_shape``), else ``"--model SPEC: ..."`` when loading fails, the factory raises or returns something
    other than an ``nn.Module``, the model breaks the contract of ``fdsm.models.user``, or it has nothing to train.
    """
    check_event_shape(event_shape)
    factory = load_factory(spec)
    name = spec.rpartition(":")[2]
    try:
        module = factory()
    except UsageError:
        raise
    except (Exception, SystemExit) as err:
        raise UsageError(f"--model {spec}: {name}() raised {_one_line(err)}; the factory is called with no "
                         "arguments") from err
    if not isinstance(module, nn.Module):
        raise UsageError(f"--model {spec}: {name}() returned a value of type {type(module).__name__}, expected a "
                         "torch.nn.Module")
    try:
        model = UserModel(module, event_shape)
        check_user_model(model)
    except UserModelError as err:
        raise UsageError(f"--model {spec}: {err.detail}") from err
    if trains and not any(p.requires_grad for p in model.parameters()):
        raise UsageError(f"--model {spec}: has no parameters to train; train-steps times optimizer steps, so the "
                         "module needs an nn.Parameter that requires grad (derivatives and eps-sweep take it as it is)")
    return model


def _bad_event_shape(text: str) -> UsageError:
    """The refusal of a bad ``--event-shape``, ``text`` as typed (or as the parsed sizes joined by commas)."""
    return UsageError(f"--event-shape {text}: expected positive integers, e.g. 1,28,28")


def check_event_shape(event_shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """``event_shape`` as given (``None`` too), or a ``UsageError`` naming ``--event-shape`` unless every size is at
    least 1; fit to be the option's ``convert``."""
    if event_shape is not None and (not event_shape or min(event_shape) < 1):
        raise _bad_event_shape(",".join(map(str, event_shape)))
    return event_shape


def parse_event_shape(text: str) -> tuple[int, ...]:
    """``--event-shape 1,28,28`` -> (1, 28, 28); ``"16"`` -> (16,). Spaces and surrounding parentheses are
    allowed; anything but positive integers is a ``UsageError``."""
    parts = text.strip().removeprefix("(").removesuffix(")").split(",")
    parts = [part.strip() for part in parts]
    if parts and not parts[-1]:
        parts.pop()  # "16," as Python writes a 1-tuple
    try:
        shape = tuple(int(part) for part in parts)
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise _bad_event_shape(text)
    return shape
