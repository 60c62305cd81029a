r"""What every objective does before and after its maths: check the inputs, draw the direction v, reduce.

Directions (paper section 4). Every default direction has :math:`\mathbb E[v v^\top] = (\varepsilon^2/d) I`, so
:math:`C_v = \mathbb E\|v\|^2 = \varepsilon^2` whatever the ``noise``:

============ =============================================================================================
sphere       :math:`v = \varepsilon u / \|u\|`, u ~ N(0, I): uniform on the sphere of radius eps, the paper's
             :math:`p_\varepsilon(v)` and the default of every objective
gaussian     :math:`v = (\varepsilon/\sqrt d)\, u`, u ~ N(0, I) (gradient-based sliced objectives only)
rademacher   :math:`v = (\varepsilon/\sqrt d)\, \mathrm{sign}(u)` (gradient-based sliced objectives only)
============ =============================================================================================

The norm is taken per sample over the whole flattened event, d = prod(event shape). An explicit ``v=`` overrides
the draw (every row finite and nonzero, whatever eps; ``noise`` is still checked); its scale is then ``eps`` when
given, else :math:`\varepsilon^2 = \mathrm{mean}_b \|v_b\|^2` (exact for sphere and Rademacher directions), summed
in float32 or wider (``widened``). eps is a positive number (not a bool), or ``"auto"`` in the FD objectives. Every
objective divides by :math:`\varepsilon^2`; where :math:`1/\varepsilon^2` is beyond the dtype's range (float16 below
eps = 3.9e-3; float64 below about 1e-154) it raises ``fdsm.NotSupported`` (``check_fd_scale``), the exact
objectives too.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

from fdsm.fd_error import auto_step
from fdsm.registry import NotSupported
from fdsm.stencils import central_stencil

NOISES = ("sphere", "gaussian", "rademacher")
_FLOAT32_MAX = torch.finfo(torch.float32).max
REDUCTIONS = ("mean", "none")


def event_dim(x: Tensor) -> int:
    """d: the number of scalars in one sample of x: (B, *event)."""
    return math.prod(x.shape[1:])


def check_batch(who: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: expected x to be a Tensor, got {type(x).__name__}")
    if not x.is_floating_point() or x.dim() < 2 or x.shape[0] < 1 or event_dim(x) < 1:
        raise ValueError(f"{who}: expected x of shape (B, *event) with B >= 1, a non-empty event and a floating "
                         f"dtype, got {tuple(x.shape)} {x.dtype}")
    return x


def check_choice(who: str, name: str, value: object, choices: tuple) -> None:
    """Raise a ValueError unless ``value`` is one of ``choices``."""
    if isinstance(value, Tensor) or value not in choices:
        raise ValueError(f"{who}: expected {name} in {choices}, got {value!r}")


def check_flag(who: str, name: str, value: object) -> None:
    """Raise a TypeError unless ``value`` is a bool (a truthy string such as "no" is not one)."""
    if not isinstance(value, bool):
        raise TypeError(f"{who}: expected {name} to be True or False, got {type(value).__name__} {value!r}")


def check_positive(who: str, name: str, value: float | Tensor, *, allowed: str = "a positive number") -> None:
    """Raise unless ``value`` (a number or a tensor of them) is finite and > 0: a TypeError for anything else
    (a bool, a string; ``allowed`` says what is), a ValueError for a bad value. A tensor on the meta device has no
    values to check (``bench.flops.step_gflop`` counts an objective's FLOPs on it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real | Tensor):
        raise TypeError(f"{who}: expected {name} to be {allowed}, got {type(value).__name__} {value!r}")
    if isinstance(value, Tensor) and value.is_meta:
        return
    bad = (not torch.isfinite(value).all() or (value <= 0).any()) if isinstance(value, Tensor) \
        else (not math.isfinite(value) or value <= 0)
    if bad:
        if isinstance(value, Tensor):  # the first offending entry, not a summary that may look valid
            shown = value.detach().flatten()[~(torch.isfinite(value) & (value > 0)).flatten()][0].item()
        else:
            shown = value
        raise ValueError(f"{who}: expected {name} > 0 and finite, got {shown}")


def check_number(who: str, name: str, value: object, *, allowed: str = "a positive number") -> None:
    """``check_positive`` of one number: a 0-d tensor passes, a tensor of several values is a ValueError (one scale
    for the whole batch: a per-sample one would broadcast against the wrong axis)."""
    if isinstance(value, Tensor) and value.dim() != 0:
        raise ValueError(f"{who}: expected {name} to be {allowed}, got a tensor of shape {tuple(value.shape)}")
    check_positive(who, name, value, allowed=allowed)


def per_sample_sigma(who: str, sigma: float | Tensor, x: Tensor, name: str = "sigma") -> Tensor:
    """sigma as a (B, 1, ..., 1) tensor that broadcasts against x: (B, *event); a float or a (B,) tensor. ``name``:
    the argument, for errors."""
    check_positive(who, name, sigma, allowed=f"a positive number or a ({x.shape[0]},) tensor")
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.dim() == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(f"{who}: expected {name} to be a float or a ({x.shape[0]},) tensor, got {tuple(s.shape)}")
    return s.view(-1, *([1] * (x.dim() - 1)))  # (B,) -> (B, 1, ..., 1)


def draw_directions(x: Tensor, eps: float, noise: str = "sphere", generator: torch.Generator | None = None
                    ) -> Tensor:
    """v: (B, *event) with E[v v^T] = (eps^2/d) I, of the distribution ``noise`` (see the module docstring)."""
    check_choice("draw_directions", "noise", noise, NOISES)
    check_number("draw_directions", "eps", eps)
    u = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device).flatten(1)  # (B, d)
    if noise == "sphere":
        v = eps * u / u.norm(dim=1, keepdim=True)
    elif noise == "gaussian":
        v = (eps / math.sqrt(u.shape[1])) * u
    else:
        v = (eps / math.sqrt(u.shape[1])) * torch.where(u >= 0, 1.0, -1.0).to(u.dtype)
    return v.view_as(x)  # (B, d) -> (B, *event)


def widened(t: Tensor) -> Tensor:
    """t in float32, or its own dtype where that is wider: for the norm of a direction, whose squares underflow
    float16 and bfloat16 at a small eps (||v|| = 1e-3 over d = 784 components of 3.6e-5: squares of 1.3e-9, below
    float16's smallest subnormal, 6e-8)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def given_directions(who: str, x: Tensor, v: object) -> tuple[Tensor, Tensor]:
    """An explicit v, detached in x's dtype, checked to have x's shape and every row finite and nonzero (a zero or
    NaN direction would give a silent 0 or NaN for its sample); and its rows' squared norms (B,), float32 or wider."""
    if not isinstance(v, Tensor) or v.shape != x.shape:
        raise ValueError(f"{who}: expected v of x's shape {tuple(x.shape)}, "
                         f"got {tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}")
    v = v.detach().to(x.dtype)
    squares = widened(v.flatten(1)).pow(2).sum(1)
    check_positive(who, "||v_b||^2 (each sample's direction in v)", squares)
    return v, squares


def directions(who: str, x: Tensor, eps: float | None, v: Tensor | None, noise: str, default_eps: float, *,
               auto: bool = False) -> tuple[Tensor, float]:
    """The direction v and its scale eps^2 = C_v for one objective call (see the module docstring); eps^2 is
    checked against x's dtype (``check_fd_scale``). ``auto``: the objective also takes eps="auto", and a wrong
    type says so."""
    check_choice(who, "noise", noise, NOISES)
    if eps is not None:
        check_number(who, "eps", eps, allowed="a positive number or 'auto'" if auto else "a positive number")
    if v is None:
        eps = default_eps if eps is None else eps
        v = draw_directions(x, eps, noise)
    else:
        v, squares = given_directions(who, x, v)
    eps2 = float(eps) ** 2 if eps is not None else squares.mean().item()  # the given eps, else mean_b ||v_b||^2
    check_fd_scale(who, eps2, x.dtype)
    return v, eps2


def auto_directions(who: str, f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor | None, order: int
                    ) -> tuple[Tensor, Tensor]:
    """``eps="auto"`` of the FD objectives: v's direction (default uniform on the unit sphere) at the step
    ``fdsm.fd_error.auto_step`` chooses per sample for the objective's own central stencil of ``order`` (p = 2),
    detached; returns v = h u: (B, *event) and eps^2 = h^2: (B,), checked (``check_fd_scale``). Its probes are
    forwards of f, so a timed training step counts them; f gets them stacked, so pass it a ``stacked=True``
    checked callable."""
    u = draw_directions(x, 1.0, "sphere") if v is None else given_directions(who, x, v)[0]
    h = auto_step(f, x, u, order, stencil=central_stencil(order), who=who).to(x.dtype)  # (B,), detached
    u = (widened(u) / widened(u.flatten(1)).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))).to(x.dtype)  # unit
    check_fd_scale(who, h.square(), x.dtype)
    return h.view(-1, *([1] * (x.dim() - 1))) * u, h.square()


def check_fd_scale(who: str, eps2: float | Tensor, dtype: torch.dtype) -> None:
    """An objective divides by eps^2 (an FD one its stencil sums), and its gradient carries 1/eps^2: where that is
    beyond ``dtype``'s largest number (float16: 65504, so eps < 3.9e-3), the loss and its gradient overflow to inf
    (or an underflowed eps^2 = 0 gives NaN), and ``fdsm.NotSupported`` says so and what to do instead. ``eps2``: a
    number or a (B,) tensor (``eps="auto"``)."""
    if isinstance(eps2, Tensor) and eps2.is_meta:
        return
    smallest = eps2.min().item() if isinstance(eps2, Tensor) else eps2
    largest = torch.finfo(dtype).max
    name = str(dtype).removeprefix("torch.")
    if not smallest * largest > 1.0:  # 1/eps^2 beyond the range, eps^2 = 0 (an underflowed step) included
        inverse = f"{1.0 / smallest:.3g}" if smallest > 0 else "inf (eps^2 = 0)"
        raise NotSupported(f"{who}: 1/eps^2 = {inverse} is beyond {name}'s range (largest "
                           f"{largest:.6g}): the loss and its gradient would overflow; use eps >= "
                           f"{largest ** -0.5:.2g} in {name}" + (", or float32" if largest < _FLOAT32_MAX else ""))


# Said when a callable gets the wrong shape inside an FD objective, whose inputs the user never sees.
STACKED = " (the FD objectives call it on their stencil points stacked into one batch: N = points x batch)"


def _called(who: str, name: str, f: Callable[[Tensor], Tensor], inputs: Tensor) -> object:
    """f(inputs), a tensor output checked to be floating point."""
    out = f(inputs)
    if isinstance(out, Tensor) and not out.is_floating_point():
        raise TypeError(f"{who}: expected {name} to return a floating-point tensor, got {out.dtype} (an integer or "
                        "bool output has no derivatives)")
    return out


def checked_log_density(who: str, log_density: Callable[[Tensor], Tensor], *, stacked: bool = False
                        ) -> Callable[[Tensor], Tensor]:
    """log_density, with its output checked to be a floating-point (N,) for an input (N, *event); ``stacked``: the
    inputs are an FD objective's stacked stencil points, and an error says so."""
    if not callable(log_density):
        raise TypeError(f"{who}: expected log_density to be callable, got {type(log_density).__name__}")

    def wrapped(inputs: Tensor) -> Tensor:
        out = _called(who, "log_density", log_density, inputs)
        if not isinstance(out, Tensor) or out.shape != inputs.shape[:1]:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"{who}: expected log_density to map {tuple(inputs.shape)} to "
                             f"({inputs.shape[0]},), one value per sample, got {shape}" + (STACKED if stacked else ""))
        return out

    return wrapped


def checked_score(who: str, score: Callable[[Tensor], Tensor], *, stacked: bool = False
                  ) -> Callable[[Tensor], Tensor]:
    """score, with its output checked to be floating point of its input's shape (N, *event); ``stacked`` as in
    ``checked_log_density``."""
    if not callable(score):
        raise TypeError(f"{who}: expected score to be callable, got {type(score).__name__}")

    def wrapped(inputs: Tensor) -> Tensor:
        out = _called(who, "score", score, inputs)
        if not isinstance(out, Tensor) or out.shape != inputs.shape:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"{who}: expected score to map {tuple(inputs.shape)} to the same shape, got {shape}"
                             + (STACKED if stacked else ""))
        return out

    return wrapped


def reduce(who: str, per_sample: Tensor, reduction: str) -> Tensor:
    """(B,) -> 0-d mean (``"mean"``) or (B,) unchanged (``"none"``)."""
    if reduction == "mean":
        return per_sample.mean()
    check_reduction(who, reduction)
    return per_sample


def check_reduction(who: str, reduction: str) -> None:
    check_choice(who, "reduction", reduction, REDUCTIONS)
