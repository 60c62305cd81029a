r"""Bring your own model: the contract a user's ``nn.Module`` follows, and ``UserModel``, which wraps it.

The CLI takes ``--model package.module:factory`` or ``--model path/to/file.py:factory`` (see
``bench.user_model``); ``factory()`` is called with no arguments and returns an ``nn.Module`` that follows this
contract:

1. **What forward returns** is named by an optional class or instance attribute ``interface``:

   =========================== ===================================== ===================================
   ``interface``               ``forward(x)``, x: (B, \*event)       log-density and score
   =========================== ===================================== ===================================
   ``"log-density"`` (default) log p~(x): (B,), unnormalized is fine log p = forward, s = grad_x forward
   ``"energy"``                E(x): (B,)                            log p = -E, s = -grad_x E
   ``"score"``                 s(x) = grad_x log p(x): (B, \*event)  s = forward; no log-density
   =========================== ===================================== ===================================

   (``"log_density"``, the model registry's spelling, is accepted for ``"log-density"``.) Rows are independent
   samples: row b of the output depends on row b of x only, since the benchmarks differentiate the batch sum
   (``check_user_model`` compares a row alone with the same row in a batch).

2. **The event shape** is a tuple of ints, declared as an attribute ``event_shape`` (class attribute, instance
   attribute or property), or passed by the caller (``UserModel(module, event_shape=(1, 28, 28))``; on the CLI
   ``--event-shape 1,28,28``). When both are given they must agree.

3. **Differentiable and smooth.** The benchmarks take T-th order directional derivatives of log p (or of s) in
   x, by autograd and by finite differences, and backpropagate into the parameters, so use smooth activations
   (softplus, SiLU, tanh; ReLU's second derivative is zero almost everywhere) and no ``.detach()`` or
   ``torch.no_grad()`` inside ``forward``.

A minimal model (``examples/user_model.py`` is a fuller one to copy):

>>> class Quadratic(nn.Module):
...     interface = "energy"             # forward gives E(x) = |x|^2 / 2, so log p = -|x|^2 / 2 and s(x) = -x
...     event_shape = (3,)
...     def forward(self, x):            # x: (B, 3) -> (B,)
...         return 0.5 * x.pow(2).sum(1)
>>> model = UserModel(Quadratic())
>>> check_user_model(model)              # seeded forwards (batch 2 and 1); UserModelError on a broken model
>>> x = torch.randn(4, 3, dtype=torch.float64)
>>> model.log_density(x).shape, model.score(x).shape
(torch.Size([4]), torch.Size([4, 3]))
>>> torch.allclose(model.score(x), -x)
True

``UserModel`` mirrors the built-in models (``fdsm.models.energy``, ``fdsm.models.gaussian``): ``.event_shape``,
``log_density(x)`` (B, \*event) -> (B,), ``score(x)`` (B, \*event) -> (B, \*event), and ``forward`` is
``log_density``, or ``score`` for a score model. The user's module is a submodule (``model.module``), so
``parameters()``, ``.to()`` and ``state_dict()`` reach its parameters; ``load_state_dict`` takes that state_dict or the
user's module's own (``torch.save(module.state_dict(), path)``, keys without the ``module.`` prefix).
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fdsm.models.spec import check_event

INTERFACES: tuple[str, ...] = ("log-density", "energy", "score")
DEFAULT_INTERFACE = "log-density"
_ALIASES = {"log_density": "log-density"}  # the model registry's spelling (fdsm.models.spec.INTERFACES)
_MAPS = {  # what each interface's forward maps to, for error messages
    "log-density": "a log-density model maps (B, *event) to (B,)",
    "energy": "an energy model maps (B, *event) to (B,)",
    "score": "a score model maps (B, *event) to (B, *event)",
}


class UserModelError(ValueError):
    """A user's model that breaks the contract of ``fdsm.models.user``; the message is one line.

    ``str(err)`` is ``"{owner}: {detail}"``; ``owner`` names the call (``"check_user_model(MyNet)"``) and ``detail``
    says what is wrong and what to do, so that the CLI can say ``"--model SPEC: {detail}"`` instead.
    """

    def __init__(self, owner: str, detail: str):
        super().__init__(f"{owner}: {detail}")
        self.owner = owner
        self.detail = detail

    def __reduce__(self):  # picklable across a worker process, although __init__ takes two arguments
        return type(self), (self.owner, self.detail)


def _one_line(err: BaseException) -> str:
    """``"TypeName: first line of the message"``."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _resolve_interface(owner: str, module: nn.Module) -> str:
    interface = getattr(module, "interface", DEFAULT_INTERFACE)
    interface = _ALIASES.get(interface, interface) if isinstance(interface, str) else interface
    if interface not in INTERFACES:
        raise UserModelError(
            owner,
            f"interface must be one of {INTERFACES}, got {interface!r}; set the module's attribute "
            f"interface = \"log-density\", \"energy\" or \"score\", or leave it out for {DEFAULT_INTERFACE!r}",
        )
    return interface


def _as_event_shape(owner: str, value: object, source: str) -> tuple[int, ...]:
    """``value`` (a tuple, list or torch.Size of positive ints, or one int) as a tuple of ints."""
    items = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):  # torch.Size is a tuple
            raise TypeError
        shape = tuple(operator.index(n) for n in items)  # rejects floats and strings
        if any(isinstance(n, bool) for n in items):
            raise TypeError
    except TypeError:
        shape = None
    if not shape or min(shape) < 1:
        raise UserModelError(owner, f"{source} must be a non-empty tuple of positive ints such as (16,) or "
                                    f"(1, 28, 28), got {value!r}")
    return shape


def _resolve_event_shape(owner: str, module: nn.Module, given: object) -> tuple[int, ...]:
    declared = getattr(module, "event_shape", None)
    if declared is None and given is None:
        raise UserModelError(
            owner,
            "the event shape is unknown; declare it on the module (event_shape = (16,), a class or instance "
            "attribute) or pass it (UserModel(module, event_shape=...), on the CLI --event-shape 16 or 1,28,28)",
        )
    if given is None:
        return _as_event_shape(owner, declared, "the module's event_shape")
    shape = _as_event_shape(owner, given, "event_shape")
    if declared is not None and (own := _as_event_shape(owner, declared, "the module's event_shape")) != shape:
        raise UserModelError(
            owner,
            f"the module declares event_shape {own} but {shape} was passed; pass the same shape or none",
        )
    return shape


def _output_problem(out: object, batch: int, event_shape: tuple[int, ...], interface: str) -> str | None:
    """Why ``out`` is not what ``forward`` of this interface returns for a batch of ``batch``, or None."""
    expected = (batch, *event_shape) if interface == "score" else (batch,)
    if not isinstance(out, torch.Tensor):
        return (f"expected forward(x) to return a tensor of shape {expected} for interface {interface!r}, "
                f"got a value of type {type(out).__name__}; {_MAPS[interface]}")
    if tuple(out.shape) != expected:
        return (f"expected forward(x) of shape {expected} for interface {interface!r}, got {tuple(out.shape)}; "
                f"{_MAPS[interface]}")
    return None


class UserModel(nn.Module):
    r"""A user's ``nn.Module`` under the interface of the built-in models (see the module docstring).

    ``UserModel(module, event_shape=None)`` reads ``module.interface`` (default ``"log-density"``) and
    ``module.event_shape`` (or takes ``event_shape``), raising ``UserModelError`` when the interface is unknown or
    no event shape is known. Attributes: ``module`` (the user's module, a submodule), ``interface`` (one of
    ``INTERFACES``), ``event_shape`` (a tuple of ints).
    """

    def __init__(self, module: nn.Module, event_shape: Sequence[int] | None = None):
        if not isinstance(module, nn.Module):
            raise TypeError(f"UserModel(module): expected a torch.nn.Module, got type {type(module).__name__}")
        super().__init__()
        owner = f"UserModel({type(module).__name__})"
        self.interface: str = _resolve_interface(owner, module)
        self.event_shape: tuple[int, ...] = _resolve_event_shape(owner, module, event_shape)
        self.module = module  # registered as a submodule: parameters(), .to() and state_dict() reach it

    @property
    def name(self) -> str:
        """The user's class name, as error messages show it."""
        return type(self.module).__name__

    def extra_repr(self) -> str:
        return f"interface={self.interface!r}, event_shape={self.event_shape}"

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load a ``state_dict`` of the user's module itself (``torch.save(module.state_dict(), path)``: keys
        ``net.0.weight``) or of this wrapper (``UserModel.state_dict()``: the same keys after ``module.``)."""
        if self._is_wrapped(state_dict):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

    def _is_wrapped(self, state_dict: Mapping[str, Any]) -> bool:
        """Whether every key starts ``module.`` and the keys are not the user's own (a child named ``module``)."""
        keys = set(state_dict)
        return all(key.startswith("module.") for key in keys) and not keys <= set(self.module.state_dict())

    def _forward_checked(self, x: torch.Tensor, call: str) -> torch.Tensor:
        """``module(x)`` after checking x: (B, *event), with its output shape checked (cheap, no sync)."""
        owner = f"UserModel({self.name}).{call}"
        check_event(owner, x, self.event_shape)
        out = self.module(x)
        problem = _output_problem(out, x.shape[0], self.event_shape, self.interface)
        if problem is not None:
            raise UserModelError(owner, problem)
        return out

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        r"""log p~(x): (B, \*event) -> (B,); ``forward`` for ``"log-density"``, ``-forward`` for ``"energy"``.

        A score model has no log-density: ``UserModelError``, so use an objective that takes a score.
        """
        if self.interface == "score":
            raise UserModelError(
                f"UserModel({self.name}).log_density",
                "a 'score' model gives only score(x) = grad_x log p(x), no log-density; use a method or objective "
                "that takes a score (fd_ssmvr_loss, ssmvr_score_loss), or give the module interface "
                "'log-density' or 'energy'",
            )
        out = self._forward_checked(x, "log_density")
        return -out if self.interface == "energy" else out  # log p = -E

    def score(self, x: torch.Tensor) -> torch.Tensor:
        r"""s(x) = grad_x log p(x): (B, \*event) -> (B, \*event).

        A score model's ``forward``; otherwise the autograd gradient of ``log_density`` with ``create_graph=True``,
        so that the result is differentiable in x and in the parameters. Rows are independent, so the gradient of
        the batch sum holds every per-sample gradient. Under ``torch.no_grad()`` the result is detached.
        """
        if self.interface == "score":
            return self._forward_checked(x, "score")
        grad_wanted = torch.is_grad_enabled()
        with torch.enable_grad():
            x = x if x.requires_grad else x.detach().requires_grad_(True)  # keep a caller's graph through x
            log_p = self.log_density(x)  # (B,)
            if not log_p.requires_grad:  # log p does not depend on x (or anything): s = 0
                return torch.zeros_like(x)
            (s,) = torch.autograd.grad(log_p.sum(), x, create_graph=True, allow_unused=True)  # (B, *event)
        s = torch.zeros_like(x) if s is None else s
        return s if grad_wanted else s.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``score(x)`` for a score model, else ``log_density(x)``."""
        return self.score(x) if self.interface == "score" else self.log_density(x)


def _probe_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the model's first floating parameter or buffer; float32 on the CPU if none."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    return torch.float32, torch.device("cpu")


def _no_path(out: Tensor, x: Tensor) -> bool:
    """Whether out, which has a graph, has none from x (x detached inside forward, the graph is the parameters')."""
    with torch.enable_grad():  # the caller may run under torch.no_grad()
        return torch.autograd.grad(out.sum(), x, allow_unused=True)[0] is None


# NOTE [the check runs in eval mode]: ``check_user_model`` runs the user's module in eval mode, as the derivative
# sweeps run it, and then restores each submodule's own training flag. A batch norm then uses its running statistics
# and dropout is off, so a row alone and the same row inside a batch must agree. In training mode a batch norm mixes
# the rows of a batch by construction (its statistics are the batch's) and cannot run at batch 1; train-steps trains
# in that mode, and the check does not refuse such a model for it.
@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode for the block; see NOTE [the check runs in eval mode]."""
    flags = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for submodule, training in flags:
            submodule.training = training


def _checked_forward(model: UserModel, owner: str, x: Tensor) -> Tensor:
    r"""``model.module(x)`` for x: (B, \*event); a ``UserModelError`` when it raises, returns the wrong shape (or not
    a tensor) or gives non-finite values. Grad is enabled exactly when x requires it."""
    shape = tuple(x.shape)
    try:
        with torch.set_grad_enabled(x.requires_grad):
            out = model.module(x)
    except Exception as err:  # any failure of the user's code is reported, one line
        raise UserModelError(owner, f"forward(x) raised {_one_line(err)} on x of shape {shape}, {x.dtype}; check "
                                    f"that the module takes (B, *event) with event_shape {model.event_shape}") from err
    problem = _output_problem(out, shape[0], model.event_shape, model.interface)
    if problem is not None:
        at_one = " (at batch 1: the benchmarks run any --batch, 1 included)" if shape[0] == 1 else ""
        raise UserModelError(owner, problem + at_one)
    bad = 0 if out.is_meta else int((~torch.isfinite(out.detach())).sum())  # on the meta device: shapes only
    if bad:
        raise UserModelError(owner, f"forward(x) gave {bad} non-finite value(s) (nan or inf) of {out.numel()} on a "
                                    f"seeded standard-normal x of shape {shape}; check the initialisation and the "
                                    "numerics (log of a non-positive value, exp overflow)")
    return out


def _check_rows_independent(owner: str, out: Tensor, row: Tensor, dtype: torch.dtype) -> None:
    """Refuse a forward whose first row alone, ``row`` = forward(x[:1]), differs from the first row of ``out`` =
    forward(x), beyond rounding: sqrt(eps) of ``dtype`` relative to the output's size (another batch size may take
    another kernel, which rounds differently, by a few eps)."""
    if out.is_meta:  # no values
        return
    alone, inside = row.detach().double(), out[:1].detach().double()  # (1,) or (1, *event)
    tolerance = torch.finfo(dtype).eps ** 0.5 * max(1.0, float(inside.abs().max()))
    gap = float((alone - inside).abs().max())
    if gap > tolerance:
        raise UserModelError(owner, f"forward(x) of a row alone differs from the same row in a batch of {len(out)} by "
                                    f"{gap:.3g} (tolerance {tolerance:.2g}); rows must be independent samples, row b "
                                    "of the output depending on row b of x only (the contract of fdsm.models.user: "
                                    "the benchmarks differentiate the batch sum), so no batch statistics such as "
                                    "x.sum() or x.mean(0) inside forward")


def check_user_model(model: UserModel, *, batch: int = 2) -> None:
    r"""Run ``forward`` on a seeded standard-normal batch x: (batch, \*event) and on its first row alone, x[:1], and
    check what it returns.

    x is float32 on the CPU, or the dtype and device of the model's parameters when it has some (a factory that
    calls ``.double()``). The module runs in eval mode, its training flags restored after (see NOTE [the check runs
    in eval mode]). A log-density or energy model runs with grad enabled for x, so that an output with no autograd
    path to x is caught (the benchmarks differentiate it); a score model runs under ``torch.no_grad()``.
    Raises ``UserModelError`` with one line when forward raises (the exception named), returns the wrong shape
    (or not a tensor) at either batch size, returns non-finite values, gives the first row alone another value
    than inside the batch (the rows are not independent), or, for a log-density or energy model, is not
    differentiable in x (its output has no autograd path from x, even if it has one through the parameters). A
    model built on the meta device (FLOP counting) has no values: its shapes and its path from x are checked. The
    global RNG is untouched.
    """
    if not isinstance(model, UserModel):
        raise TypeError(f"check_user_model(model): expected a UserModel, got type {type(model).__name__}; wrap the "
                        "module first: check_user_model(UserModel(module))")
    if batch < 1:
        raise ValueError(f"check_user_model(model, batch={batch}): expected batch >= 1")
    owner = f"check_user_model({model.name})"
    dtype, device = _probe_dtype_device(model)
    differentiate = model.interface != "score"
    x = torch.randn((batch, *model.event_shape), generator=torch.Generator().manual_seed(0))
    x = x.to(device=device, dtype=dtype).requires_grad_(differentiate)  # (batch, *event)
    with _eval_mode(model.module):
        out = _checked_forward(model, owner, x)
        row = _checked_forward(model, owner, x[:1].detach().requires_grad_(differentiate))  # (1, *event)
    _check_rows_independent(owner, out, row, dtype)
    # The output may carry a graph through the parameters alone (x detached inside forward): ask for d out / dx.
    try:
        unreachable = differentiate and (not out.requires_grad or _no_path(out, x))
    except Exception as err:  # an op of forward with no derivative: the benchmarks need one
        raise UserModelError(owner, f"the backward of forward(x) raised {_one_line(err)}; the benchmarks "
                                    "differentiate forward in x, so every op in it needs a derivative") from err
    if unreachable:
        raise UserModelError(owner, "forward(x) is not differentiable in x (no autograd path from x to its output); "
                                    "the benchmarks differentiate log p in x, so avoid .detach(), .item() and "
                                    "torch.no_grad() inside forward")
