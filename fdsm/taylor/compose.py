r"""The fast path of every elementwise rule: the Taylor coefficients of φ at z_0, composed with the input series.

For an elementwise φ and a series :math:`z(t) = z_0 + \delta(t)`, :math:`\delta(t) = \sum_{k \ge 1} z_k t^k`,

.. math::
    \varphi(z(t)) = \sum_{m=0}^{K} c_m\, \delta(t)^m + O(t^{K+1}), \qquad c_m = \frac{\varphi^{(m)}(z_0)}{m!},

evaluated by Horner's rule on series, :math:`h_K = c_K`, :math:`h_m = c_m + \delta\, h_{m+1}`, with :math:`h_m`
truncated at order K - m (δ has no constant term, so nothing of higher order reaches :math:`h_0 = \varphi(z)`).
This is Faà di Bruno's formula, computed without enumerating partitions.

The coefficients :math:`c_m` come in closed form from a few elementwise ops on :math:`z_0`. For w = σ(z_0) or
w = tanh z_0, every derivative :math:`w^{(n)}`, n >= 1, is a polynomial in two functions of w,

.. math::
    w^{(n)} = q\, p^{b_n} A_n(q), \qquad q = w' \;(= w - w^2 \text{ or } 1 - w^2), \qquad
    p = 1 - 2w \text{ or } w, \qquad b_n = (n + 1) \bmod 2,

with :math:`A_n` of degree :math:`\lfloor (n-1)/2 \rfloor` and exact rational coefficients (computed once per K,
``functools.lru_cache``); the :math:`A_n` of one parity are evaluated together, as sums of powers of q. Unlike a
polynomial in w, this form has no cancellation where w -> 1 (:math:`w^{(n)} \to 0` there with q, not as a
difference of O(1) terms), which float32 needs at high order.

Cost per element: K(K+1)(K+2)/6 multiply-adds for the composition, in K(K+1)/2 kernel launches (one multiply and
one in-place ``addcmul`` per further term of each Horner step), each over whole slices of the coefficient axis,
where the term-by-term recurrences of ``fdsm.taylor.series`` take O(K) launches *per coefficient*. Those
recurrences are the slow, obvious reference that the tests hold these rules to.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import Tensor
from torch._functorch.utils import unwrap_dead_wrappers

from fdsm.taylor import fused, series
from kernels.constants import constant


def horner(c: Sequence[Tensor] | Tensor, z: Tensor) -> Tensor:
    r""":math:`\sum_m c_m (z(t) - z_0)^m` truncated at K; c: c_0 .. c_K, each (*s) (a (K+1, *s) tensor or a
    sequence of K+1 tensors), z: (K+1, *s) -> (K+1, *s).

    Horner's rule in :math:`s = \delta^2`, two coefficients a step:

    .. math::
        H_i = c_{2i} + c_{2i+1}\,\delta + s\, H_{i+1}, \quad i = \lfloor K/2 \rfloor, \dots, 0, \qquad
        \varphi(z(t)) = H_0,

    with :math:`H_i` truncated at order n = K - 2i (so :math:`H_{\lfloor K/2 \rfloor}` is :math:`c_K` for an
    even K, :math:`c_{K-1} + c_K \delta` for an odd one). Each :math:`H_i` is kept as its constant term
    :math:`c_{2i}` and its tail (orders 1..n), so no step copies the series it has built: :math:`c_{2i+1}\delta`
    is one multiply, and :math:`(s H_{i+1})_k = \sum_j s_{k-j} (H_{i+1})_j` one in-place ``addcmul`` per j
    (s has no order below 2, so j <= n - 2). The last step multiplies all of z, not δ: its row 0, a placeholder
    :math:`z_0 c_1`, is overwritten by :math:`c_0`, so the result is that one fresh tensor, without a final ``cat``.
    s itself is a Cauchy product, :math:`s_k = \sum_{i=1}^{k-1} \delta_i \delta_{k-i}`: one multiply and K - 2
    ``addcmul``. For K = 6 this is 17 launches and 50 row operations, where Horner's rule in δ takes 21 and 57.
    """
    order = z.shape[0] - 1
    deltas = {n: z[1:n + 1] for n in range(1, order)}  # deltas[n] = (δ_1 .. δ_n), made once
    if order >= 2:
        s = z[1:order] * z[1]  # orders 2..K of δ², from the i = 1 terms δ_1 δ_{k-1}
        for i in range(2, order):
            series.accumulate(s[i - 1:], deltas[order - i], z[i])  # + δ_i δ_{k-i}, k = i+1..K
        squares = {n: s[:n] for n in range(1, order)}  # squares[n] = (s_2 .. s_{n+1})
    top = order // 2
    head, tail = c[order], None  # H_top for an even K: c_K, no tail (an odd K starts at the loop)
    for i in range(top - 1 if order % 2 == 0 else top, -1, -1):
        n = order - 2 * i  # H_i has orders 0..n; H_{i+1} = (head, tail), orders 0..n-2
        product = (z if i == 0 else deltas[n]) * c[2 * i + 1]  # c_{2i+1} δ_k (and, for i = 0, z_0 c_1)
        orders = product[1:] if i == 0 else product  # rows of orders 1..n
        if i < top:
            series.accumulate(orders[1:], squares[n - 1], head)  # + s_k (H_{i+1})_0, k = 2..n
            for j in range(1, n - 1):
                series.accumulate(orders[j + 1:], squares[n - 1 - j], tail[j - 1])  # + s_{k-j} (H_{i+1})_j, k = j+2..n
        head, tail = c[2 * i], orders
    product[0] = head  # c_0, in place of z_0 c_1 (no backward formula saved this fresh product)
    return product


class Composed(torch.autograd.Function):
    r"""``horner(coefficients(z_0, K), z)`` with a closed-form backward, so that autograd records one node per
    elementwise op instead of every multiply of the composition.

    For y(t) = φ(z(t)), a change of :math:`z_j` by ε changes y(t) by :math:`\varepsilon\, t^j \varphi'(z(t))`, so

    .. math::
        \frac{\partial y_k}{\partial z_j} = g_{k-j}, \qquad g = \varphi'(z(t)) = \sum_m (m+1)\, c_{m+1}\,
        (z(t) - z_0)^m, \qquad \bar z_j = \sum_{k \ge j} \bar y_k\, g_{k-j}.

    The backward recomputes the coefficients one order further (:math:`c_{K+1}`), composes g by the same Horner
    rule and correlates it with the incoming gradient: K+1 ``addcmul``. Only z is saved. It is written in
    differentiable ops, so a double backward through it works too, and ``torch.func.vmap`` can batch it (its rule
    generated from these torch ops). Forward mode (``jvp``, and so ``torch.func.hessian`` over a reverse pass through
    it) is the same series the other way: :math:`\dot y_k = \sum_{j \le k} g_{k-j}\, \dot z_j`, a Cauchy product.
    """

    generate_vmap_rule = True

    @classmethod
    def apply(cls, z: Tensor, coefficients) -> Tensor:
        """``Function.apply`` without its per-call binding of ``forward``'s signature (``inspect.signature``, a
        sizeable share of a fused rule's call): both arguments are positional, without defaults, so the binding
        changes nothing. Under a ``torch.func`` transform it is the base class's own."""
        if torch._C._are_functorch_transforms_active():
            return super().apply(z, coefficients)
        (z,) = unwrap_dead_wrappers((z,))  # as Function.apply does, then the C++ apply that it calls
        return super(torch.autograd.Function, cls).apply(z, coefficients)

    @staticmethod
    def forward(z: Tensor, coefficients) -> Tensor:  # noqa: D102
        return _composition(z, coefficients)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: D102  (separate, so torch.func transforms can take it)
        z, ctx.coefficients = inputs
        ctx.fused = fused.settings()  # the backward may run outside the fused_rules() block
        ctx.save_for_backward(z)
        ctx.save_for_forward(z)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        (z,) = ctx.saved_tensors
        if ctx.fused is not None and not torch.is_grad_enabled() and (
                kernel := fused.kernel(_backward_rows, ctx.coefficients, z, grad, settings=ctx.fused)) is not None:
            return kernel(z, grad), None
        order = z.shape[0] - 1
        g = _derivative_series(z, ctx.coefficients)
        out = grad * g[0]  # the i = 0 terms: ybar_j g_0
        for i in range(1, order + 1):
            series.accumulate(out[:order + 1 - i], grad[i:], g[i])  # + ybar_{j+i} g_i for j = 0..K-i
        return out, None

    @staticmethod
    def jvp(ctx, z_dot: Tensor, _) -> Tensor:  # noqa: D102
        (z,) = ctx.saved_tensors
        return series.cauchy(_derivative_series(z, ctx.coefficients), z_dot)


def _derivative_series(z: Tensor, coefficients) -> Tensor:
    """The series of φ'(z(t)), (K+1, *s): the coefficients one order further (c_0 .. c_{K+1}), composed."""
    order = z.shape[0] - 1
    c = coefficients(z[0], order + 1)
    return horner([(m + 1) * c[m + 1] for m in range(order + 1)], z)


def _backward_rows(z: Tensor, grad: Tensor, *, coefficients) -> Tensor:
    r"""``Composed.backward`` in row form, for a compiler: :math:`\bar z_j = \sum_{i=0}^{K-j} \bar y_{j+i}\, g_i`
    with g = φ'(z(t)) by ``horner_rows``."""
    order = z.shape[0] - 1
    with fusable():  # the coefficients in row form too (``scaled_rows``)
        c = coefficients(z[0], order + 1)
    g = horner_rows([(m + 1) * c[m + 1] for m in range(order + 1)], z)
    return torch.stack([sum(grad[j + i] * g[i] for i in range(order + 1 - j)) for j in range(order + 1)])


def horner_rows(c: Sequence[Tensor] | Tensor, z: Tensor) -> Tensor:
    r"""The sum of ``horner``, written for a compiler: coefficient by coefficient, with no in-place op and no slice
    of a stacked tensor,

    .. math::
        y_0 = c_0, \qquad y_k = \sum_{m=1}^{k} c_m\, (\delta^m)_k, \qquad
        (\delta^m)_k = \sum_{j=1}^{k-m+1} \delta_j\, (\delta^{m-1})_{k-j},

    so that every row is one expression of the rows of z and the c_m: about K^3/6 multiply-adds, each its own op
    when run eagerly (more launches than ``horner``), one loop nest once ``torch.compile`` fuses them.
    c: c_0 .. c_K, each (*s); z: (K+1, *s) -> (K+1, *s).
    """
    order = z.shape[0] - 1
    delta = [None, *(z[k] for k in range(1, order + 1))]  # δ_1 .. δ_K
    power = delta  # (δ^m)_k for the current m, k >= m
    rows = [c[0], *(c[1] * delta[k] for k in range(1, order + 1))]
    for m in range(2, order + 1):
        power = [None] * m + [sum(delta[j] * power[k - j] for j in range(1, k - m + 2)) for k in range(m, order + 1)]
        rows[m:] = [rows[k] + c[m] * power[k] for k in range(m, order + 1)]
    return torch.stack(rows)


_FUSABLE: contextvars.ContextVar[bool] = contextvars.ContextVar("fusable", default=False)


@contextlib.contextmanager
def fusable():
    """Within it, the elementwise rules compose by ``horner_rows`` and make their coefficients row by row
    (``scaled_rows``, ``derivative_coefficients``): for a trace that a compiler will fuse. A coefficient that is
    one row of a stacked table product is stored whole by the compiler before any row is read, one more pass over
    memory of the size of the series; as one expression per row it stays in the kernel's loop."""
    token = _FUSABLE.set(True)
    try:
        yield
    finally:
        _FUSABLE.reset(token)


def fusing() -> bool:
    """Whether the rules run within ``fusable()``."""
    return _FUSABLE.get()


def compose(z: Tensor, coefficients) -> Tensor:
    """φ(z(t)) for the φ of ``coefficients(z_0, K)``: through ``Composed`` where autograd records it, else
    directly (no autograd node to make; and a plain composition of torch ops, which ``make_fx`` can trace): by
    ``horner_rows`` within ``fusable()``, else as ``_composition``."""
    if torch.is_grad_enabled() and z.requires_grad:
        return Composed.apply(z, coefficients)
    return _rows(z, coefficients=coefficients) if fusing() else _composition(z, coefficients)


def _rows(z: Tensor, *, coefficients) -> Tensor:
    """``horner_rows`` of φ's coefficients at z_0, the coefficients too in row form (within ``fusable()``): the
    composition in the form a compiler fuses."""
    with fusable():
        return horner_rows(coefficients(z[0], z.shape[0] - 1), z)


def _composition(z: Tensor, coefficients) -> Tensor:
    """The eager composition: ``horner``, or within ``fdsm.taylor.fused.fused_rules()`` ``_rows`` as one compiled
    kernel."""
    if fused.enabled() and (kernel := fused.kernel(_rows, coefficients, z)) is not None:
        return kernel(z)
    return horner(coefficients(z[0], z.shape[0] - 1), z)


# ---- the coefficients c_m = φ^(m)(z_0) / m! -------------------------------------------------------------------

# w' = q, q' = α q p, p' = γ q, p^2 = 1 + ρ q: the (α, γ, ρ) of w = σ (p = 1 - 2w) and of w = tanh (p = w)
_RELATIONS = {"sigmoid": (1, -2, -4), "tanh": (-2, 1, -1)}


@functools.lru_cache(maxsize=32)
def derivative_forms(kind: str, count: int) -> tuple[dict[tuple[int, int], Fraction], ...]:
    r""":math:`w^{(n)}`, n = 1..count, each as exact coefficients ``{(a, b): e}`` of :math:`q^a p^b` (b = 0, 1),
    for w = σ(z) or tanh z (``kind``): :math:`w' = q`, then by the chain rule on each monomial,
    :math:`(q^a)' = \alpha a\, q^a p` and :math:`(q^a p)' = \alpha a\, q^a + (\alpha a \rho + \gamma)\, q^{a+1}`
    (after :math:`p^2 = 1 + \rho q`). So b alternates: :math:`w^{(n)} = q\, p^{b_n} A_n(q)` with
    :math:`b_n = (n + 1) \bmod 2` and :math:`\deg A_n = \lfloor (n - 1)/2 \rfloor`."""
    alpha, gamma, rho = _RELATIONS[kind]
    forms = [{(1, 0): Fraction(1)}]
    while len(forms) < count:
        derivative: dict[tuple[int, int], Fraction] = {}
        for (a, b), e in forms[-1].items():
            terms = [((a, 1), alpha * a)] if b == 0 else [((a, 0), alpha * a), ((a + 1, 0), alpha * a * rho + gamma)]
            for key, factor in terms:
                derivative[key] = derivative.get(key, Fraction(0)) + e * factor
        forms.append(derivative)
    return tuple(forms[:count])


@functools.lru_cache(maxsize=128)
def derivative_tables(kind: str, count: int, beta: float, shift: int, ndim: int, dtype: torch.dtype,
                      device: torch.device) -> tuple[tuple[Tensor, ...], ...]:
    r"""The coefficients of :math:`\beta^n A_n(q) / (n + \mathrm{shift})!`, n = 1..count, for the odd n and then
    the even n: per parity, its columns, column i the rows' coefficients of :math:`q^i` (zero past a row's degree),
    shaped (rows, 1, ..., 1) with ``ndim`` ones to broadcast along *s. Exact rationals, rounded once; made once per
    key, never inference tensors (a first call under ``torch.inference_mode`` must not poison later autograd
    calls)."""
    forms = derivative_forms(kind, count)
    tables = []
    for b in range(min(count, 2)):
        rows = [[Fraction(beta) ** n / math.factorial(n + shift) * forms[n - 1].get((a, b), Fraction(0))
                 for a in range(1, (count - 1 - b) // 2 + 2)] for n in range(1 + b, count + 1, 2)]
        with torch.inference_mode(False):
            tables.append(tuple(torch.tensor([float(e) for e in column], dtype=dtype, device=device)
                                .view(-1, *([1] * ndim)) for column in zip(*rows, strict=True)))
    return tuple(tables)


def derivative_coefficients(kind: str, count: int, beta: float, shift: int, q: Tensor, p: Tensor) -> list[Tensor]:
    r""":math:`\beta^n q\, p^{b_n} A_n(q) / (n + \mathrm{shift})!` for n = 1..count, w = σ or tanh (``kind``);
    q, p: (*s) -> count tensors (*s), in order of n.

    Eagerly from ``derivative_tables``, the rows of one parity at once, :math:`\sum_i e_i\, q^{i+1} p^b` (the
    columns :math:`e_i` broadcast along *s): one multiply for the first power and then, per further column, one
    multiply for the next power and one in-place ``addcmul``. Within ``fusable()`` one expression per n, its
    rational coefficients as numbers."""
    if fusing():
        return [_derivative_row(form, Fraction(beta) ** n / math.factorial(n + shift), q, p)
                for n, form in enumerate(derivative_forms(kind, count), start=1)]
    tables = derivative_tables(kind, count, beta, shift, q.dim(), q.dtype, q.device)
    classes = []
    for b, columns in enumerate(tables):
        power = q * p if b else q  # q^(i+1) p^b for i = 0
        rows = columns[0] * power  # (rows, *s)
        for e in columns[1:]:
            power = power * q
            series.accumulate(rows, e, power)  # in place on the fresh rows: no backward formula saved them
        classes.append(rows)
    return [classes[(n - 1) % 2][(n - 1) // 2] for n in range(1, sum(len(k) for k in classes) + 1)]


def _derivative_row(form: dict[tuple[int, int], Fraction], scale: Fraction, q: Tensor, p: Tensor) -> Tensor:
    """scale · Σ e q^a p^b over the monomials (a, b): e of one ``derivative_forms`` entry, by Horner's rule in q."""
    degree, b = max(a for a, _ in form), next(iter(form))[1]
    row = None
    for a in range(degree, 0, -1):
        e = float(scale * form.get((a, b), Fraction(0)))
        row = e * q if row is None else (row + e) * q
    return row * p if b else row


def scaled_rows(weights: Sequence[float], t: Tensor) -> Tensor | list[Tensor]:
    """weights_m · t for m = 0..K, t: (*s): one broadcast multiply by the weights as a (K+1,) constant, (K+1, *s);
    within ``fusable()`` K+1 tensors, each t times a number."""
    if fusing():
        return [weight * t for weight in weights]
    return along(constant(tuple(weights), t.dtype, t.device), t) * t


def along(t: Tensor, like: Tensor) -> Tensor:
    """A (K+1,) tensor shaped to broadcast along the leading axis of ``like`` (*s) -> (K+1, 1, ..., 1)."""
    return t.view(-1, *([1] * like.dim()))


def power_coefficients(base: Tensor, ratio: Tensor, weights: Sequence[float]) -> Tensor | list[Tensor]:
    r""":math:`c_m = \mathrm{weights}_m \cdot \mathrm{base} \cdot \mathrm{ratio}^m`, m = 0..K; base, ratio: (*s)
    -> (K+1, *s), or K+1 tensors within ``fusable()``."""
    powers = [torch.ones_like(ratio)]
    for _ in range(len(weights) - 1):
        powers.append(powers[-1] * ratio)
    if fusing():  # row by row (``fusable``)
        return [weight * power * base for weight, power in zip(weights, powers, strict=True)]
    w = constant(tuple(weights), ratio.dtype, ratio.device)
    return torch.stack(powers) * along(w, ratio) * base  # (K+1, *s)
