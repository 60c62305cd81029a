r"""Finite-difference stencils for T-th order directional derivatives (paper section 3.2).

A stencil is a set of offsets :math:`\gamma_i` and weights :math:`w_i` such that

.. math::
    \sum_i w_i\, f(x + \gamma_i v) = (v^\top \nabla_x)^T f(x) + O(\|v\|^{T+p}),

where p is the stencil's ``accuracy``. Writing the Taylor expansion (paper eq. 5)
:math:`f(x + \gamma v) = \sum_t \frac{\gamma^t}{t!} (v^\top\nabla)^t f(x)`, the weights are the solution of the
moment conditions

.. math::
    \sum_i w_i \gamma_i^t = T!\, \delta_{tT}, \qquad t = 0, \dots, n-1,

for n distinct offsets (Lemma 1, eq. 6, with :math:`w_i = T!\,\beta_i`; these are Fornberg's weights). The
factor T! is folded into the weights, and the step :math:`\varepsilon = \|v\|` is carried by v itself, so
a stencil is independent of the step. Weights are solved in exact rational arithmetic and rounded once.

Example: the 3-point second difference of eq. (8).

>>> s = central_stencil(2)
>>> s.offsets, s.weights, s.accuracy
((-1.0, 0.0, 1.0), (1.0, -2.0, 1.0), 2)
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Stencil:
    """``sum_i weights[i] * f(x + offsets[i] * v)`` approximates ``(v . grad)^T f(x)`` with error O(|v|^accuracy)
    relative to the leading term. ``order`` is T."""

    order: int
    offsets: tuple[float, ...]
    weights: tuple[float, ...]
    accuracy: int

    def __len__(self) -> int:
        return len(self.offsets)


def _as_fraction(value: object, name: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float, Fraction)):
        raise TypeError(f"{name}: expected real numbers, got {value!r} of type {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}: expected finite numbers, got {value!r}")
    return Fraction(value)  # exact: a float converts to the rational it stores


def check_order(order: object, who: str) -> int:
    """The order as a Python int: any integer (a NumPy one from ``np.arange`` too), not a bool, at least 1."""
    if isinstance(order, bool) or not isinstance(order, numbers.Integral):
        raise TypeError(f"{who}: expected order to be an int >= 1, got {order!r} of type {type(order).__name__}")
    if order < 1:
        raise ValueError(f"{who}: expected order >= 1, got {order}")
    return int(order)


def check_moments(stencil: Stencil, who: str) -> Stencil:
    r"""``stencil`` if its weights are a T-th difference of the accuracy it claims: the moment conditions
    :math:`\sum_i w_i \gamma_i^t = T!\,\delta_{tT}` for t = 0 .. T + accuracy - 1, each to 1e-9 of
    :math:`\sum_i |w_i \gamma_i^t|` (the rounding of weights solved exactly); else a ValueError naming the first t
    that fails. For a stencil a user builds by hand (``fdsm.Stencil`` is a plain dataclass): its field types here,
    its moments once per stencil (cached: the methods check their stencil on every call)."""
    if not (isinstance(stencil.offsets, tuple) and isinstance(stencil.weights, tuple)):
        raise TypeError(f"{who}: expected the stencil's offsets and weights to be tuples of numbers, got "
                        f"{type(stencil.offsets).__name__} and {type(stencil.weights).__name__}")
    if isinstance(stencil.accuracy, bool) or not isinstance(stencil.accuracy, int) or stencil.accuracy < 1:
        raise ValueError(f"{who}: expected a stencil accuracy that is an int >= 1, got {stencil.accuracy!r}")
    return _moments_hold(stencil, who)


@functools.lru_cache(maxsize=256)
def _moments_hold(stencil: Stencil, who: str) -> Stencil:
    if len(stencil.offsets) != len(stencil.weights) or not stencil.offsets:
        raise ValueError(f"{who}: expected a stencil with as many weights as offsets (at least one), got "
                         f"{len(stencil.weights)} weights for {len(stencil.offsets)} offsets")
    if not all(math.isfinite(float(c)) for c in (*stencil.offsets, *stencil.weights)):
        raise ValueError(f"{who}: expected finite stencil offsets and weights, got {stencil}")
    T = stencil.order
    for t in range(T + stencil.accuracy):
        terms = [w * g ** t for g, w in zip(stencil.offsets, stencil.weights, strict=True)]
        target = math.factorial(T) if t == T else 0
        if abs(math.fsum(terms) - target) > 1e-9 * max(math.fsum(map(abs, terms)), 1.0):
            raise ValueError(f"{who}: the stencil's weights are not a difference of order {T} and accuracy "
                             f"{stencil.accuracy}: sum_i w_i offset_i^{t} = {math.fsum(terms):.6g}, expected "
                             f"{target}; build one with fdsm.stencil(order, offsets) or central_stencil")
    return stencil


def _solve_exact(matrix: list[list[Fraction]], rhs: list[Fraction]) -> list[Fraction]:
    """Gauss-Jordan elimination over the rationals; ``matrix`` is square and non-singular."""
    n = len(rhs)
    rows = [list(row) + [b] for row, b in zip(matrix, rhs, strict=True)]  # augmented (n, n+1)
    for col in range(n):
        pivot = next(r for r in range(col, n) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        p = rows[col][col]
        rows[col] = [a / p for a in rows[col]]
        for r in range(n):
            if r != col and rows[r][col] != 0:
                factor = rows[r][col]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col], strict=True)]
    return [row[n] for row in rows]


def _moment(offsets: Sequence[Fraction], weights: Sequence[Fraction], t: int) -> Fraction:
    """:math:`\\sum_i w_i \\gamma_i^t`, exactly."""
    return sum((w * g**t for g, w in zip(offsets, weights, strict=True)), Fraction(0))


def _build(order: int, offsets: Sequence[Fraction], weights: Sequence[Fraction]) -> Stencil:
    """Drop zero-weight points (a forward that adds nothing), find the accuracy exactly, round once."""
    points = [(g, w) for g, w in zip(offsets, weights, strict=True) if w != 0]
    gammas, ws = [g for g, _ in points], [w for _, w in points]
    # The first moment past T that does not vanish sets the truncation error: O(|v|^(t - T)) relative.
    t = order + 1
    while _moment(gammas, ws, t) == 0:
        t += 1
    return Stencil(order, tuple(float(g) for g in gammas), tuple(float(w) for w in ws), t - order)


def exact_weights(order: int, gammas: Sequence[Fraction]) -> list[Fraction]:
    r"""The exact weights of Lemma 1 on the offsets ``gammas``: :math:`\sum_i w_i \gamma_i^t = T!\,\delta_{tT}`,
    t = 0..n-1 (Fornberg), solved in rationals."""
    n = len(gammas)
    vandermonde = [[g**t for g in gammas] for t in range(n)]  # row t: gamma_i^t
    rhs = [Fraction(math.factorial(order)) if t == order else Fraction(0) for t in range(n)]
    return _solve_exact(vandermonde, rhs)


def stencil(order: int, offsets: Sequence[float]) -> Stencil:
    r"""The stencil for :math:`(v^\top\nabla)^T` on any n >= T+1 distinct offsets (Lemma 1, eq. 6; Fornberg).

    Solves :math:`\sum_i w_i \gamma_i^t = T!\,\delta_{tT}` for t = 0..n-1 exactly, so the accuracy is at least
    n - T (one more for symmetric offsets). Points whose exact weight is zero are dropped.

    >>> stencil(1, [0, 1]).weights  # forward difference f(x+v) - f(x)
    (-1.0, 1.0)
    >>> stencil(1, [0, 1]).accuracy
    1
    """
    who = "stencil(order, offsets)"
    T = check_order(order, who)
    gammas = [_as_fraction(g, "stencil(order, offsets): offsets") for g in offsets]
    if len(set(gammas)) != len(gammas):
        raise ValueError(f"{who}: expected distinct offsets, got {list(offsets)}")
    if len(gammas) < T + 1:
        raise ValueError(f"{who}: order {T} needs at least {T + 1} offsets, got {len(gammas)}")
    return _build(T, gammas, exact_weights(T, gammas))


def central_stencil(order: int, accuracy: int = 2, alphas: Sequence[float] | None = None) -> Stencil:
    r"""The symmetric stencil of Theorem 1 (eq. 7), generalized to any even ``accuracy`` p.

    With K positive distinct :math:`\alpha_k` (default 1, 2, ..., K) and :math:`K_T = \lceil T/2 \rceil`:

    .. math::
        (v^\top\nabla)^T f(x) \approx \frac{T!}{2} \sum_k \beta_k \alpha_k^{-2}
            [f(x+\alpha_k v) + f(x-\alpha_k v) - 2f(x)] \quad (T = 2K_T),

        (v^\top\nabla)^T f(x) \approx \frac{T!}{2} \sum_k \beta_k \alpha_k^{-1}
            [f(x+\alpha_k v) - f(x-\alpha_k v)] \quad (T = 2K_T - 1),

    where :math:`V^\top \beta = e_{K_T}` and :math:`V_{kj} = \alpha_k^{2j-2}` is the Vandermonde matrix of the
    :math:`\alpha_k^2`. Theorem 1 is p = 2, K = K_T: T+1 evaluations, a centre point only for even T. Each
    further 2 orders of accuracy add one pair :math:`\pm\alpha` (K = K_T + p/2 - 1).

    >>> central_stencil(1).weights  # (f(x+v) - f(x-v)) / 2, eq. (8)
    (-0.5, 0.5)
    >>> central_stencil(2, accuracy=4).offsets
    (-2.0, -1.0, 0.0, 1.0, 2.0)
    """
    who = "central_stencil(order, accuracy, alphas)"
    T = check_order(order, who)
    if isinstance(accuracy, bool) or not isinstance(accuracy, int) or accuracy < 2 or accuracy % 2:
        raise ValueError(f"{who}: expected an even accuracy >= 2, got {accuracy!r}")
    K_T = (T + 1) // 2
    K = K_T + accuracy // 2 - 1
    if alphas is None:
        a = [Fraction(k) for k in range(1, K + 1)]
    else:
        a = [_as_fraction(x, f"{who}: alphas") for x in alphas]
        if len(a) != K:
            raise ValueError(f"{who}: order {T} at accuracy {accuracy} needs {K} alphas, got {len(a)}")
        if any(x <= 0 for x in a) or len(set(a)) != K:
            raise ValueError(f"{who}: expected distinct positive alphas, got {list(alphas)}")
    # V^T beta = e_{K_T}: sum_k alpha_k^(2j-2) beta_k = delta_{j, K_T}, j = 1..K.
    beta = _solve_exact([[x ** (2 * j - 2) for x in a] for j in range(1, K + 1)],
                        [Fraction(int(j == K_T)) for j in range(1, K + 1)])
    half_T_factorial = Fraction(math.factorial(T), 2)
    weights: dict[Fraction, Fraction] = {}
    for alpha, b in zip(a, beta, strict=True):
        if T % 2 == 0:  # b alpha^-2 [f(x + alpha v) + f(x - alpha v) - 2 f(x)]
            c = half_T_factorial * b / alpha**2
            weights[alpha] = weights[-alpha] = c
            weights[Fraction(0)] = weights.get(Fraction(0), Fraction(0)) - 2 * c
        else:  # b alpha^-1 [f(x + alpha v) - f(x - alpha v)]
            c = half_T_factorial * b / alpha
            weights[alpha], weights[-alpha] = c, -c
    offsets = sorted(weights)
    return _build(T, offsets, [weights[g] for g in offsets])
