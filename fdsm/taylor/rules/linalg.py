r"""Taylor rules of dense linear algebra: inverse, solves, Cholesky, LU, log-determinants (Gaussian log-densities),
QR, least squares and pseudo-inverses, the matrix exponential.

Each rule below is the rule of one aten op (``fdsm.taylor.rules``' package docstring says what a rule is), for real
(batched) square matrices: a Jet may be the matrix, the right-hand side, or both. A matrix series
:math:`A(t) = \sum_k A_k t^k` enters through the recurrence of the op's defining identity, order by order: the
primal of every output is the op's own on the primals, and for k >= 1

======================= ===================================================================================
op                      recurrence, k >= 1
======================= ===================================================================================
inverse                 :math:`B_k = -B_0 \sum_{j=1}^{k} A_j B_{k-j}` (``linalg_inv_ex``; ``cholesky_inverse``
                        with :math:`A = L L^T`)
solves                  :math:`X_k = A_0^{-1}\bigl(R_k - \sum_{j=1}^{k} A_j X_{k-j}\bigr)`, one factorization
                        of :math:`A_0` for every k; ``left=False``, :math:`X A = R`, multiplies on the other
                        side (``_linalg_solve_ex``, ``linalg_solve_triangular``, ``triangular_solve``,
                        ``linalg_lu_solve``; ``cholesky_solve`` with :math:`A = L L^T`)
Cholesky                :math:`L_k = L_0\,\Phi\bigl(L_0^{-1} S_k L_0^{-T}\bigr)`,
                        :math:`S_k = A_k - \sum_{j=1}^{k-1} L_j L_{k-j}^T`, Φ the lower triangle with half the
                        diagonal (``linalg_cholesky_ex``, ``cholesky``)
LU                      :math:`M = L_0^{-1} S_k U_0^{-1}`, :math:`S_k = P^T A_k - \sum_{j=1}^{k-1} L_j U_{k-j}`:
                        :math:`L_k = L_0\,\mathrm{tril}_{-1}(M)`, :math:`U_k = \mathrm{triu}(M)\,U_0`
                        (``linalg_lu_factor_ex``, ``linalg_lu``)
svdvals                 the power 1/2 of the eigenvalue series of the smaller Gram matrix (``_linalg_svd``)
eigh                    :math:`\lambda_{k,i} = -(R_k)_{ii}`, :math:`(C_k)_{il} = (R_k)_{il}/(\lambda_{0,i} -
                        \lambda_{0,l})`, :math:`V_k = V_0 C_k` (``_linalg_eigh``, distinct eigenvalues)
log-determinant         :math:`k\,\ell_k = \sum_{j=1}^{k} j \operatorname{tr}(A_j B_{k-j})`, B the inverse
                        series; the sign is a constant (``_linalg_slogdet``)
determinant             :math:`\det P \prod_i U_{ii}`, the product of the series of U's diagonal
                        (``_linalg_det``)
QR                      :math:`X = Q_0^T B_k R_0^{-1}`, :math:`B_k = A_k - \sum_{j=1}^{k-1} Q_j R_{k-j}`: the
                        strict lower triangle of :math:`C = Q_0^T Q_k` is X's, its symmetric part from
                        :math:`Q^T Q = I`; :math:`R_k = (X - C) R_0` (``linalg_qr``, full column rank)
least squares           :math:`X = R^{-1} Q^T B` by the QR series and a solve (``linalg_lstsq``; ``linalg_pinv``
                        with B = I, of full rank)
matrix exponential      the first block row of the exponential of the block Toeplitz matrix of the series
                        (``linalg_matrix_exp``)
======================= ===================================================================================

That is O(K^2) matrix products and K solves with the factorization of :math:`A_0` per op. The ``_ex`` outputs (info),
the LU factors and pivots that ``solve``, ``slogdet`` and ``det`` also return, slogdet's sign and the permutations are
constants: the op's own values on the primals (a pivot order is locally constant in x). Every rule is torch ops
(``lu_factor``, ``lu_solve``, ``solve_triangular``, matmuls), so its result is differentiable in the parameters of f.

The rules differentiate the function the op computes, which reads only part of its matrix: a triangular solve
(and ``cholesky_solve``, ``cholesky_inverse``) its triangle, a unitriangular one not even the diagonal, the
Cholesky factorization and ``pinv(hermitian=True)`` the lower triangle of A (the factorization the upper one for
``upper=True``), symmetrized. Nested autograd agrees wherever f passes what the op expects (a triangular factor, a
symmetric A); where it does not, autograd's ``cholesky_solve`` and ``cholesky_inverse`` differentiate the upper
triangle that the op ignores, its Cholesky the symmetric part :math:`(A + A^T)/2` of A, and its ``pinv`` the whole
A, so there it is the reference that is wrong.

``torch.distributions.MultivariateNormal`` reaches ``linalg_cholesky_ex`` (a covariance or precision matrix) and
``linalg_solve_triangular``; its argument checks, a data-dependent branch, are off while f is traced
(``fdsm.taylor.trace._unvalidated_distributions``). Complex matrices, the LU of a non-square one, the QR and least
squares of a wide one, and a least-squares problem or pseudo-inverse below full rank (a minimum-norm solution, not
smooth where the rank drops) raise ``NotSupported``; a singular :math:`A_0` gives infinite or NaN coefficients, as
its derivatives are (det's are finite there, and its rule, the product of U's diagonal, is accurate up to an exactly
zero pivot, where it is NaN).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fdsm.registry import NotSupported
from fdsm.taylor import series
from fdsm.taylor.jet import Jet, primal_of
from fdsm.taylor.rules.operands import _plus_primal
from fdsm.taylor.rules.products import _product
from fdsm.taylor.rules.table import register_rule
from fdsm.taylor.trace import INSTEAD

aten = torch.ops.aten


# ---- helpers --------------------------------------------------------------------------------------------------

def _real(op: str, **arguments: object) -> None:
    """Refuses a complex matrix or right-hand side, naming the op and the argument (the rules transpose where a
    complex matrix needs the conjugate transpose)."""
    for name, value in arguments.items():
        dtype = primal_of(value).dtype if isinstance(value, (Jet, Tensor)) else None
        if dtype is not None and dtype.is_complex:
            raise NotSupported(f"exact-taylor: the Taylor rule of {op} takes real matrices; its argument {name} is "
                               f"{dtype}; {INSTEAD}")


def _aligned(s: Tensor | None, ndim: int) -> Tensor | None:
    """A series (K+1, *shape) with singleton dims inserted after the coefficient axis so that shape has ``ndim``
    dims: its batch dims then broadcast against a larger batch without mixing with the coefficient axis."""
    if s is None or s.dim() - 1 >= ndim:
        return s
    return s.view(s.shape[0], *([1] * (ndim + 1 - s.dim())), *s.shape[1:])


def _higher(value: object) -> Tensor | None:
    """A Jet's series, or None for a constant (whose coefficients k >= 1 are zero)."""
    return value.series if isinstance(value, Jet) else None


def _with_primal(x0: Tensor, higher: Tensor) -> Jet:
    """The Jet of coefficients (x0, higher[0], ...): the op's own primal, the rule's higher coefficients."""
    return Jet(torch.cat([x0.unsqueeze(0), higher]))


def _solved(x0: Tensor, a: Tensor | None, r: Tensor | None, solve0: Callable[[Tensor], Tensor], *,
            left: bool = True) -> Tensor:
    r"""The series X of the solution of :math:`A X = R` (``left``) or :math:`X A = R`, from :math:`X_0` and the
    inverse of :math:`A_0` as ``solve0``:

    .. math::
        X_k = A_0^{-1}\Bigl(R_k - \sum_{j=1}^{k} A_j X_{k-j}\Bigr), \qquad
        X_k = \Bigl(R_k - \sum_{j=1}^{k} X_{k-j} A_j\Bigr) A_0^{-1} \quad (\text{left=False}).

    ``a``, ``r``: the series (K+1, ..., n, n) and (K+1, ..., n, m) of a matrix and a right-hand side that depend on
    x, None for a constant (at least one is a series); x0: (..., n, m). With a constant A, every X_k is
    :math:`A_0^{-1} R_k` at once (one call of ``solve0``); else one matmul over j and one solve per k."""
    ndim = x0.dim()
    a, r = _aligned(a, ndim), _aligned(r, ndim)
    if a is None:
        return torch.cat([x0.unsqueeze(0), solve0(r[1:])])
    xs = [x0]
    for k in range(1, a.shape[0]):
        previous = torch.stack(xs[::-1])  # X_{k-1}, ..., X_0, lined up with A_1, ..., A_k
        terms = torch.matmul(a[1:k + 1], previous) if left else torch.matmul(previous, a[1:k + 1])
        total = terms.sum(0)
        xs.append(solve0(-total if r is None else r[k] - total))
    return torch.stack(xs)


def _inverse_series(a: Tensor, b0: Tensor) -> Tensor:
    r"""The series of :math:`A^{-1}` from :math:`B_0 = A_0^{-1}`: :math:`B_k = -B_0 \sum_{j=1}^{k} A_j B_{k-j}`
    (the solve with R = I); a: (K+1, ..., n, n) -> (K+1, ..., n, n)."""
    return _solved(b0, a, None, lambda rhs: torch.matmul(b0, rhs))


def _products(a: Tensor, b: Tensor) -> Tensor:
    r"""The Cauchy product of two matrix series with matmul in place of ·: :math:`(AB)_k = \sum_{j=0}^{k} A_j
    B_{k-j}`; (K+1, ..., n, p) and (K+1, ..., p, m) -> (K+1, ..., n, m)."""
    i, j, k = series._pairs(a.shape[0] - 1, a.device)
    terms = torch.matmul(a.index_select(0, i), b.index_select(0, j))
    return terms.new_zeros((a.shape[0], *terms.shape[1:])).index_add(0, k, terms)


def _triangle(s: Tensor, upper: bool, unitriangular: bool = False) -> Tensor:
    """The triangle of a series of matrices that a triangular op reads: the upper or lower one, without the
    diagonal where the op takes it as ones (unitriangular: its derivative is then zero)."""
    offset = int(unitriangular)
    return torch.triu(s, offset) if upper else torch.tril(s, -offset)


# ---- inverse ----------------------------------------------------------------------------------------------------

def _inv_ex(a: Jet, *, check_errors: bool = False) -> tuple[Jet, Tensor]:
    r"""``linalg_inv_ex(A) -> (inverse, info)``: :math:`B_0 = A_0^{-1}` (the op's),
    :math:`B_k = -B_0 \sum_{j=1}^{k} A_j B_{k-j}`; info is a constant."""
    _real("aten.linalg_inv_ex", A=a)
    b0, info = aten.linalg_inv_ex(a.primal, check_errors=check_errors)
    return Jet(_inverse_series(a.series, b0)), info


register_rule(aten.linalg_inv_ex.default, _inv_ex)


# ---- solves: one factorization of A_0, K solves --------------------------------------------------------------

def _is_vector(a0: Tensor, b0: Tensor) -> bool:
    """``torch.linalg.solve``'s vector case: B of shape (n,), or (*batch, n) with A of shape (*batch, n, n)."""
    return b0.dim() == 1 or (b0.dim() == a0.dim() - 1 and b0.shape == a0.shape[:-1])


def _solve_ex(a: object, b: object, *, left: bool = True, check_errors: bool = False) -> tuple[object, ...]:
    r"""``_linalg_solve_ex(A, B, left) -> (result, LU, pivots, info)``, :math:`A X = B` (``left=False``:
    :math:`X A = B`):

    .. math::
        X_k = A_0^{-1}\Bigl(B_k - \sum_{j=1}^{k} A_j X_{k-j}\Bigr),

    each :math:`A_0^{-1}` by ``lu_solve`` with one ``lu_factor`` of :math:`A_0` (the op's own LU output is of A or
    of its transpose, as torch chooses by memory layout). A vector B (shape (n,), or A's shape without its last dim)
    is the one-column matrix, as in the op. LU, pivots and info are the op's, constants."""
    _real("aten._linalg_solve_ex", A=a, B=b)
    a0, b0 = primal_of(a), primal_of(b)
    x0, lu, pivots, info = aten._linalg_solve_ex(a0, b0, left=left, check_errors=check_errors)
    factors = torch.linalg.lu_factor_ex(a0)[:2]  # unchecked: whether a singular A_0 raises is check_errors' call
    vector = _is_vector(a0, b0)
    r = _higher(b)
    if vector and r is not None:
        r = r.unsqueeze(-1)
    x = _solved(x0.unsqueeze(-1) if vector else x0, _higher(a), r,
                lambda rhs: torch.linalg.lu_solve(*factors, rhs, left=left), left=left)
    return Jet(x.squeeze(-1) if vector else x), lu, pivots, info


register_rule(aten._linalg_solve_ex.default, _solve_ex)


def _solve_triangular(a: object, b: object, *, upper: bool, left: bool = True, unitriangular: bool = False) -> Jet:
    r"""``linalg_solve_triangular(A, B, upper, left, unitriangular)``: :math:`A X = B` (``left=False``:
    :math:`X A = B`) for the triangle of A that the op reads (without its diagonal where unitriangular):

    .. math::
        X_k = A_0^{-1}\Bigl(B_k - \sum_{j=1}^{k} \triangle(A_j)\, X_{k-j}\Bigr),

    each :math:`A_0^{-1}` the op itself on the triangular :math:`A_0`."""
    _real("aten.linalg_solve_triangular", A=a, B=b)
    a0 = primal_of(a)

    def solve0(rhs: Tensor) -> Tensor:
        return aten.linalg_solve_triangular(a0, rhs, upper=upper, left=left, unitriangular=unitriangular)

    a_series = _higher(a)
    return Jet(_solved(solve0(primal_of(b)), None if a_series is None else _triangle(a_series, upper, unitriangular),
                       _higher(b), solve0, left=left))


register_rule(aten.linalg_solve_triangular.default, _solve_triangular)


def _triangular_solve(b: object, a: object, upper: bool = True, transpose: bool = False, unitriangular: bool = False
                      ) -> tuple[object, object]:
    r"""``triangular_solve(B, A, upper, transpose, unitriangular) -> (solution, cloned_coefficient)``, the deprecated
    form: :math:`\mathrm{op}(A) X = B` with op(A) the triangle of A that it reads, transposed where ``transpose``;
    the recurrence of ``linalg_solve_triangular``. The cloned coefficient is A itself (broadcast to the batch):
    a Jet where A depends on x."""
    _real("aten.triangular_solve", B=b, A=a)
    a0 = primal_of(a)

    def solve0(rhs: Tensor) -> Tensor:
        return aten.triangular_solve(rhs, a0, upper, transpose, unitriangular)[0]

    x0, cloned = aten.triangular_solve(primal_of(b), a0, upper, transpose, unitriangular)
    a_series = _higher(a)
    if a_series is not None:
        a_series = _triangle(a_series, upper, unitriangular)
        a_series = a_series.mT if transpose else a_series
        order = a_series.shape[0] - 1
        cloned = Jet(_aligned(a.series, cloned.dim()).expand(order + 1, *cloned.shape))
    return Jet(_solved(x0, a_series, _higher(b), solve0)), cloned


register_rule(aten.triangular_solve.default, _triangular_solve)


def _gram(factor: Tensor, upper: bool) -> Tensor:
    r"""The series of :math:`A = L L^T` (or :math:`U^T U` for ``upper``) from the triangle of a factor's series."""
    f = _triangle(factor, upper)
    return _products(f.mT, f) if upper else _products(f, f.mT)


def _cholesky_solve(b: object, factor: object, upper: bool = False) -> Jet:
    r"""``cholesky_solve(B, L, upper)``: :math:`A X = B` with :math:`A = L L^T` (:math:`U^T U` for ``upper``), L
    the triangle that the op reads; the solve's recurrence with the series
    :math:`A_j = \sum_{i=0}^{j} L_i L_{j-i}^T`, each :math:`A_0^{-1}` the op itself on :math:`L_0`."""
    _real("aten.cholesky_solve", B=b, L=factor)
    f0 = primal_of(factor)

    def solve0(rhs: Tensor) -> Tensor:
        return aten.cholesky_solve(rhs, f0, upper)

    f_series = _higher(factor)
    return Jet(_solved(solve0(primal_of(b)), None if f_series is None else _gram(f_series, upper), _higher(b), solve0))


register_rule(aten.cholesky_solve.default, _cholesky_solve)


def _cholesky_inverse(factor: Jet, upper: bool = False) -> Jet:
    r"""``cholesky_inverse(L, upper)``: :math:`(L L^T)^{-1}` (:math:`(U^T U)^{-1}`), the inverse's recurrence
    :math:`B_k = -B_0 \sum_{j=1}^{k} A_j B_{k-j}` with :math:`A_j = \sum_{i=0}^{j} L_i L_{j-i}^T` from the
    triangle that the op reads; :math:`B_0` is the op's."""
    _real("aten.cholesky_inverse", L=factor)
    return Jet(_inverse_series(_gram(factor.series, upper), aten.cholesky_inverse(factor.primal, upper)))


register_rule(aten.cholesky_inverse.default, _cholesky_inverse)


def _lu_matrix(lu: Tensor, p: Tensor | None) -> Tensor:
    """The series of A = P L U from that of the packed factors (L unit lower, U upper; the identity of L in the
    primal only)."""
    lower, upper = torch.tril(lu, -1), torch.triu(lu)
    lower = torch.cat([lower[:1] + torch.eye(lu.shape[-1], dtype=lu.dtype, device=lu.device), lower[1:]])
    product = _products(lower, upper)
    return product if p is None else torch.matmul(p, product)


def _lu_solve(lu: object, pivots: Tensor, b: object, *, left: bool = True, adjoint: bool = False) -> Jet:
    r"""``linalg_lu_solve(LU, pivots, B, left, adjoint)``: :math:`A X = B` (:math:`A^T` for ``adjoint``,
    :math:`X A = B` for ``left=False``) with :math:`A = P L U` from the packed factors; the solve's recurrence with
    :math:`A_j = P \sum_{i=0}^{j} L_i U_{j-i}`, each :math:`A_0^{-1}` the op itself on :math:`LU_0`."""
    _real("aten.linalg_lu_solve", LU=lu, B=b)
    lu0 = primal_of(lu)

    def solve0(rhs: Tensor) -> Tensor:
        return aten.linalg_lu_solve(lu0, pivots, rhs, left=left, adjoint=adjoint)

    a = None
    if isinstance(lu, Jet):
        p = torch.lu_unpack(lu0, pivots, unpack_data=False)[0]
        a = _lu_matrix(lu.series, p)
        a = a.mT if adjoint else a
    return Jet(_solved(solve0(primal_of(b)), a, _higher(b), solve0, left=left))


register_rule(aten.linalg_lu_solve.default, _lu_solve)


# ---- factorizations -----------------------------------------------------------------------------------------

def _cholesky_series(a: Tensor, l0: Tensor) -> Tensor:
    r"""The series of the lower Cholesky factor of a symmetric series A from :math:`L_0`: for k >= 1,

    .. math::
        S_k = A_k - \sum_{j=1}^{k-1} L_j L_{k-j}^T, \qquad L_k = L_0\,\Phi\bigl(L_0^{-1} S_k L_0^{-T}\bigr),

    Φ the lower triangle with half the diagonal (:math:`S_k = L_0 L_k^T + L_k L_0^T`, and :math:`L_0^{-1} L_k` is
    lower triangular). Two triangular solves and one matmul per k."""
    ls = [l0]
    for k in range(1, a.shape[0]):
        s = a[k]
        if k > 1:
            s = s - torch.matmul(torch.stack(ls[1:k]), torch.stack(ls[k - 1:0:-1]).mT).sum(0)
        m = torch.linalg.solve_triangular(l0, s, upper=False)  # L_0^{-1} S_k
        m = torch.linalg.solve_triangular(l0.mT, m, upper=True, left=False)  # ... L_0^{-T}
        phi = torch.tril(m) - 0.5 * torch.diag_embed(torch.diagonal(m, 0, -2, -1))
        ls.append(torch.matmul(l0, phi))
    return torch.stack(ls)


def _symmetric(a: Tensor, upper: bool) -> Tensor:
    """The symmetric matrices whose lower (upper) triangle is that of a: what a Cholesky factorization reads."""
    t = torch.triu(a) if upper else torch.tril(a)
    return t + torch.triu(a, 1).mT if upper else t + torch.tril(a, -1).mT


def _cholesky_factor(a: Jet, l0: Tensor, upper: bool) -> Jet:
    """The Jet of the Cholesky factor (upper: :math:`U = L^T`) from the op's own primal factor."""
    sym = _symmetric(a.series, upper)
    if upper:
        return Jet(_cholesky_series(sym, l0.mT).mT)
    return Jet(_cholesky_series(sym, l0))


def _cholesky_ex(a: Jet, *, upper: bool = False, check_errors: bool = False) -> tuple[Jet, Tensor]:
    r"""``linalg_cholesky_ex(A, upper) -> (L, info)``, :math:`A = L L^T` (``upper``: :math:`A = U^T U`,
    :math:`U = L^T`), of the symmetric matrix whose lower (upper) triangle is A's, the one the op reads:
    :math:`L_k = L_0\,\Phi(L_0^{-1} S_k L_0^{-T})`, :math:`S_k = A_k - \sum_{j=1}^{k-1} L_j L_{k-j}^T`
    (``_cholesky_series``); info is a constant."""
    _real("aten.linalg_cholesky_ex", A=a)
    l0, info = aten.linalg_cholesky_ex(a.primal, upper=upper, check_errors=check_errors)
    return _cholesky_factor(a, l0, upper), info


def _cholesky(a: Jet, upper: bool = False) -> Jet:
    """``cholesky(A, upper)``, the deprecated form: the factor of ``linalg_cholesky_ex``."""
    _real("aten.cholesky", A=a)
    return _cholesky_factor(a, aten.cholesky(a.primal, upper), upper)


register_rule(aten.linalg_cholesky_ex.default, _cholesky_ex)
register_rule(aten.cholesky.default, _cholesky)


def _lu_series(a: Tensor, l0: Tensor, u0: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    r"""The series of the factors of :math:`A = P L U` (L unit lower, U upper, P the primal's permutation): for
    k >= 1, with :math:`S_k = P^T A_k - \sum_{j=1}^{k-1} L_j U_{k-j} = L_0 U_k + L_k U_0`,

    .. math::
        M = L_0^{-1} S_k U_0^{-1} = L_0^{-1} L_k + U_k U_0^{-1}, \qquad
        L_k = L_0\,\mathrm{tril}_{-1}(M), \quad U_k = \mathrm{triu}(M)\,U_0

    (:math:`L_0^{-1} L_k` is strictly lower, :math:`U_k U_0^{-1}` upper)."""
    pa = torch.matmul(p.mT, a)
    ls, us = [l0], [u0]
    for k in range(1, a.shape[0]):
        s = pa[k]
        if k > 1:
            s = s - torch.matmul(torch.stack(ls[1:k]), torch.stack(us[k - 1:0:-1])).sum(0)
        m = torch.linalg.solve_triangular(l0, s, upper=False, unitriangular=True)
        m = torch.linalg.solve_triangular(u0, m, upper=True, left=False)
        ls.append(torch.matmul(l0, torch.tril(m, -1)))
        us.append(torch.matmul(torch.triu(m), u0))
    return torch.stack(ls), torch.stack(us)


def _square(op: str, a: Jet) -> None:
    if a.shape[-1] != a.shape[-2]:
        raise NotSupported(f"exact-taylor: the Taylor rule of {op} takes square matrices; its argument A is "
                           f"{tuple(a.shape[-2:])}; {INSTEAD}")


def _lu_factor_ex(a: Jet, *, pivot: bool = True, check_errors: bool = False) -> tuple[Jet, Tensor, Tensor]:
    r"""``linalg_lu_factor_ex(A, pivot) -> (LU, pivots, info)``, :math:`A = P L U` packed as L - I + U:
    :math:`LU_k = L_k + U_k` from ``_lu_series``; pivots and info are constants."""
    _real("aten.linalg_lu_factor_ex", A=a)
    _square("aten.linalg_lu_factor_ex", a)
    lu0, pivots, info = aten.linalg_lu_factor_ex(a.primal, pivot=pivot, check_errors=check_errors)
    p, l0, u0 = torch.lu_unpack(lu0, pivots)
    ls, us = _lu_series(a.series, l0, u0, p)
    return _with_primal(lu0, ls[1:] + us[1:]), pivots, info


def _lu(a: Jet, *, pivot: bool = True) -> tuple[Tensor, Jet, Jet]:
    r"""``linalg_lu(A, pivot) -> (P, L, U)``: the factors' series of ``_lu_series``; P is a constant."""
    _real("aten.linalg_lu", A=a)
    _square("aten.linalg_lu", a)
    p, l0, u0 = aten.linalg_lu(a.primal, pivot=pivot)
    ls, us = _lu_series(a.series, l0, u0, p)
    return p, Jet(ls), Jet(us)


register_rule(aten.linalg_lu_factor_ex.default, _lu_factor_ex)
register_rule(aten.linalg_lu.default, _lu)


# ---- the symmetric eigendecomposition ---------------------------------------------------------------------------

def _eigh(a: Jet, uplo: str = "L", compute_v: bool = True) -> tuple[Jet, Jet | Tensor]:
    r"""``_linalg_eigh(A, UPLO, compute_v) -> (eigenvalues, eigenvectors)`` of the symmetric matrix whose lower
    (upper) triangle is A's, :math:`A V = V \Lambda`, :math:`V^T V = I`. With :math:`V_k = V_0 C_k` and
    :math:`\tilde A_j = V_0^T A_j V_0`, order k of both identities reads, for k >= 1,

    .. math::
        \Lambda_0 C_k - C_k \Lambda_0 = \Lambda_k + R_k, \quad
        R_k = \sum_{j=1}^{k-1} C_j \Lambda_{k-j} - \sum_{j=1}^{k} \tilde A_j C_{k-j}; \qquad
        C_k + C_k^T = -\sum_{j=1}^{k-1} C_j^T C_{k-j},

    so :math:`\lambda_{k,i} = -(R_k)_{ii}`, :math:`(C_k)_{il} = (R_k)_{il} / (\lambda_{0,i} - \lambda_{0,l})` off the
    diagonal, and the diagonal of :math:`C_k` is half the second identity's right side. Distinct eigenvalues only: a
    repeated one gives infinite coefficients (its eigenvectors are not differentiable), as autograd's."""
    _real("aten._linalg_eigh", A=a)
    lam0, v0 = aten._linalg_eigh(a.primal, uplo, True)
    tilde = torch.matmul(torch.matmul(v0.mT, _symmetric(a.series, uplo.upper() == "U")), v0)  # (K+1, ..., n, n)
    gap = lam0.unsqueeze(-1) - lam0.unsqueeze(-2)  # λ_i - λ_l
    eye = torch.eye(lam0.shape[-1], dtype=torch.bool, device=lam0.device)
    inverse_gap = torch.where(eye, 0.0, 1.0 / torch.where(eye, 1.0, gap))
    cs, lams = [torch.eye(lam0.shape[-1], dtype=lam0.dtype, device=lam0.device).expand_as(v0)], [lam0]
    for k in range(1, a.order + 1):
        r = -sum(torch.matmul(tilde[j], cs[k - j]) for j in range(1, k + 1))
        r = r + sum(cs[j] * lams[k - j].unsqueeze(-2) for j in range(1, k))  # C_j Λ_{k-j}: columns scaled
        lams.append(-torch.diagonal(r, 0, -2, -1))
        half = -0.5 * sum((torch.matmul(cs[j].mT, cs[k - j]) for j in range(1, k)), torch.zeros_like(v0))
        cs.append(r * inverse_gap + torch.diag_embed(torch.diagonal(half, 0, -2, -1)))
    values = Jet(torch.stack(lams))
    if not compute_v:  # the op's own empty eigenvectors
        return values, v0.new_empty(0)
    return values, Jet(torch.matmul(v0, torch.stack(cs)))


register_rule(aten._linalg_eigh.default, _eigh)


class _NotComputed(Jet):
    """The Jet of an output that its rule does not compute (an SVD's singular vectors): reading its series raises
    ``NotSupported`` with the reason, so an output f never reads (``svdvals`` asks the SVD for U and V while it
    traces) costs nothing, and one it reads is never a silent constant."""

    def __init__(self, why: str):
        object.__setattr__(self, "why", why)

    @property
    def series(self) -> Tensor:
        raise NotSupported(self.why)


def _svd(a: Jet, full_matrices: bool = True, compute_uv: bool = True, *, driver: str | None = None
         ) -> tuple[object, Jet, object]:
    r"""``_linalg_svd(A, full_matrices, compute_uv) -> (U, S, Vh)``, its singular values (``svdvals``, the spectral
    and nuclear norms, ``cond``): :math:`\sigma_i^2` are the eigenvalues of the smaller Gram matrix
    (:math:`A^T A` or :math:`A A^T`, a Cauchy product of series), so S is the power 1/2 of their series
    (``_eigh``, ``series.power``), in descending order as the op's. Distinct, non-zero singular values only. U and
    Vh are ``_NotComputed``: a use of them raises."""
    _real("aten._linalg_svd", A=a)
    u, s0, vh = aten._linalg_svd(a.primal, full_matrices, False, driver=driver)
    rows, columns = a.shape[-2:]
    gram = _products(a.series.mT, a.series) if rows >= columns else _products(a.series, a.series.mT)
    squares = _eigh(Jet(gram), "L", False)[0].series.flip(-1)  # σ_i^2, descending
    values = _with_primal(s0, series.power(squares, 0.5)[1:])
    if not compute_uv:
        return u, values, vh
    why = (f"exact-taylor: the Taylor rule of aten._linalg_svd gives the singular values only (torch.linalg.svdvals, "
           f"matrix_norm(ord=2 or 'nuc'), cond), not U and V; for a symmetric matrix use torch.linalg.eigh, {INSTEAD}")
    return _NotComputed(why), values, _NotComputed(why)


register_rule(aten._linalg_svd.default, _svd)


# ---- QR, and the least-squares solutions and pseudo-inverses of full rank that it gives --------------------------

def _tall(op: str, a: Jet, why: str) -> None:
    if a.shape[-2] < a.shape[-1]:
        raise NotSupported(f"exact-taylor: the Taylor rule of {op} takes matrices with at least as many rows as "
                           f"columns; its argument A is {tuple(a.shape[-2:])} ({why}); {INSTEAD}")


def _qr_series(a: Tensor, q0: Tensor, r0: Tensor) -> tuple[Tensor, Tensor]:
    r"""The series of the reduced QR factors of a tall matrix of full column rank, A = Q R with
    :math:`Q^T Q = I` and R upper triangular; a: (K+1, ..., m, n), m >= n, q0: (..., m, n), r0: (..., n, n).
    Order k of A = QR and of :math:`Q^T Q = I` give, with the known terms

    .. math::
        B_k = A_k - \sum_{j=1}^{k-1} Q_j R_{k-j}, \qquad S_k = \sum_{j=1}^{k-1} Q_j^T Q_{k-j},

    :math:`Q_0 R_k + Q_k R_0 = B_k` and :math:`C + C^T = -S_k` for :math:`C = Q_0^T Q_k`. So
    :math:`X = Q_0^T B_k R_0^{-1} = R_k R_0^{-1} + C` is C plus an upper triangle: C's strict lower triangle L is
    X's, and

    .. math::
        C = L - L^T - \operatorname{triu}_1(S_k) - \tfrac12 \operatorname{diag}(S_k), \quad
        R_k = (X - C) R_0, \quad Q_k = (B_k - Q_0 R_k) R_0^{-1},

    each :math:`R_0^{-1}` a triangular solve. The factors' signs are the op's, locally constant in x."""
    def right(b: Tensor) -> Tensor:  # b R_0^{-1}
        return torch.linalg.solve_triangular(r0, b, upper=True, left=False)

    qs, rs = [q0], [r0]
    for k in range(1, a.shape[0]):
        b = a[k] - sum((qs[j] @ rs[k - j] for j in range(1, k)), torch.zeros_like(a[k]))
        s = sum((qs[j].mT @ qs[k - j] for j in range(1, k)), torch.zeros_like(r0))
        x = right(q0.mT @ b)
        lower = torch.tril(x, -1)
        c = lower - lower.mT - torch.triu(s, 1) - torch.diag_embed(torch.diagonal(s, 0, -2, -1) * 0.5)
        rs.append(torch.triu((x - c) @ r0))
        qs.append(right(b - q0 @ rs[-1]))
    return torch.stack(qs), torch.stack(rs)


def _qr(a: Jet, mode: str = "reduced") -> tuple[object, Jet]:
    r"""``linalg_qr(A, mode) -> (Q, R)``: the series of ``_qr_series`` for a matrix of full column rank with at least
    as many rows as columns (mode ``complete`` of a tall matrix adds columns to Q that A does not determine: refused;
    mode ``r`` returns Q empty, a constant). The primals are the op's."""
    _real("aten.linalg_qr", A=a)
    _tall("aten.linalg_qr", a, "a wide matrix's R is not triangular in its last columns")
    if mode == "complete" and a.shape[-2] > a.shape[-1]:
        raise NotSupported("exact-taylor: the Taylor rule of aten.linalg_qr takes mode 'reduced' or 'r' for a "
                           f"matrix with more rows than columns (A is {tuple(a.shape[-2:])}): the columns that "
                           f"mode 'complete' adds to Q are not a function of A; {INSTEAD}")
    q, r = aten.linalg_qr(a.primal, mode)
    q0 = q if mode != "r" else aten.linalg_qr(a.primal, "reduced")[0]
    qs, rs = _qr_series(a.series, q0, r)
    return (q if mode == "r" else _with_primal(q, qs[1:])), _with_primal(r, rs[1:])


def _least_squares(a: Tensor, b: Tensor | None, x0: Tensor, q0: Tensor, r0: Tensor, *, b0: Tensor | None = None
                   ) -> Tensor:
    r"""The series of the least-squares solution :math:`X = R^{-1} Q^T B` of :math:`\min \|A X - B\|` for A of
    full column rank: the QR series of A, then the triangular solve of ``_solved`` with the series of
    :math:`Q^T B` (a Cauchy product of matrix series). a: (K+1, ..., m, n); b: B's series, or None for the
    constant ``b0``; x0: the solution's primal."""
    qs, rs = _qr_series(a, q0, r0)
    if b is None:
        rhs = torch.matmul(qs.mT, b0)
    else:
        ndim = max(qs.dim(), b.dim()) - 1
        rhs = _products(_aligned(qs.mT, ndim), _aligned(b, ndim))
    return _solved(x0, rs, rhs, lambda c: torch.linalg.solve_triangular(r0, c, upper=True))


def _full_column_rank(op: str, rank: Tensor, columns: int) -> None:
    """Refuses a rank below the number of columns: there the op's solution is a minimum-norm one, whose series
    the rule does not compute, and which a cutoff (``rcond``, ``atol``, ``rtol``) may make discontinuous."""
    if rank.numel() and bool((rank < columns).any()):
        raise NotSupported(f"exact-taylor: the Taylor rule of {op} takes matrices of full rank; this one has rank "
                           f"{int(rank.min())} of {columns}; {INSTEAD}")


def _lstsq(a: object, b: object, rcond: float | None = None, *, driver: str | None = None
           ) -> tuple[object, object, Tensor, object]:
    r"""``linalg_lstsq(A, B, rcond, driver) -> (solution, residuals, rank, singular_values)``. With A a constant,
    the solution is linear in B: :math:`X_k` is the op's on :math:`B_k` (all k in one call, as columns). With A a
    Jet, of full column rank and at least as many rows as columns: :math:`X = R^{-1} Q^T B` (``_least_squares``),
    and the residuals (drivers other than ``gelsy``) :math:`\sum_i (A X - B)_{i\cdot}^2`, a Cauchy square. A vector
    B (A's shape without its last dim) is the one-column matrix, as in the op. The rank is a constant; the singular
    values (drivers ``gelsd``, ``gelss``) are not computed: a use of them raises (``torch.linalg.svdvals`` has a
    rule)."""
    _real("aten.linalg_lstsq", A=a, B=b)
    a0, b0 = primal_of(a), primal_of(b)
    x0, residuals, rank, singular_values = aten.linalg_lstsq(a0, b0, rcond, driver=driver)
    vector = b0.dim() == a0.dim() - 1
    b0, x0 = (b0.unsqueeze(-1), x0.unsqueeze(-1)) if vector else (b0, x0)  # one column
    bs = _higher(b)
    bs = bs.unsqueeze(-1) if vector and bs is not None else bs
    if not isinstance(a, Jet):  # X_k = lstsq(A, B_k): the K columns of B_1..B_K side by side, one call
        columns = bs[1:].movedim(0, -1).flatten(-2)  # (..., m, c K)
        higher = aten.linalg_lstsq(a0, columns, rcond, driver=driver)[0].unflatten(-1, (-1, bs.shape[0] - 1))
        x = torch.cat([x0.unsqueeze(0), higher.movedim(-1, 0)])
    else:
        _tall("aten.linalg_lstsq", a, "an underdetermined system's solution is a minimum-norm one")
        # gels (the only driver on CUDA) assumes full rank and reports none: the rank is then measured here
        _full_column_rank("aten.linalg_lstsq", rank if rank.numel() else torch.linalg.matrix_rank(a0), a.shape[-1])
        q0, r0 = torch.linalg.qr(a0)
        x = _least_squares(a.series, bs, x0, q0, r0, b0=b0)
    if residuals.numel():  # sum_i (A X - B)_i^2, B's series (b0, 0, ..., 0) where it is a constant
        ndim = x.dim() - 1
        ax = _products(_aligned(a.series, ndim), x) if isinstance(a, Jet) else torch.matmul(a0, x)
        error = ax - _aligned(bs, ndim) if bs is not None else _plus_primal(ax, -b0)
        residuals = _with_primal(residuals, series.square(error).sum(-2)[1:])
    if singular_values.numel():
        singular_values = _NotComputed("exact-taylor: the Taylor rule of aten.linalg_lstsq gives the solution and "
                                       f"the residuals, not the singular values; use torch.linalg.svdvals, {INSTEAD}")
    return Jet(x.squeeze(-1) if vector else x), residuals, rank, singular_values


def _pinv(a: Jet, *, atol: object = None, rtol: object = None, hermitian: bool = False) -> Jet:
    r"""``linalg_pinv(A, atol, rtol, hermitian)`` of a matrix of full rank: for a tall one
    :math:`A^+ = R^{-1} Q^T`, the least-squares solution with B = I (``_least_squares``); a wide one is
    :math:`(A^{T+})^T`. The rank, at the op's tolerances, must be full: below it the pseudo-inverse drops singular
    values under a cutoff, and is not smooth there."""
    _real("aten.linalg_pinv", A=a)
    if hermitian:  # the op reads the lower triangle only, as eigh does
        a = Jet(_symmetric(a.series, upper=False))
    a0, atol0, rtol0 = a.primal, primal_of(atol), primal_of(rtol)
    m, n = a0.shape[-2:]
    _full_column_rank("aten.linalg_pinv", torch.linalg.matrix_rank(a0, atol=atol0, rtol=rtol0, hermitian=hermitian),
                      min(m, n))
    x0 = aten.linalg_pinv(a0, atol=atol0, rtol=rtol0, hermitian=hermitian)
    tall = a.series if m >= n else a.series.mT  # (K+1, ..., m', n'), m' >= n'
    eye = torch.eye(tall.shape[-2], dtype=a0.dtype, device=a0.device)
    q0, r0 = torch.linalg.qr(tall[0])
    x = _least_squares(tall, None, x0 if m >= n else x0.mT, q0, r0, b0=eye)
    return Jet(x if m >= n else x.mT)


register_rule(aten.linalg_qr.default, _qr)
register_rule(aten.linalg_lstsq.default, _lstsq)
register_rule(aten.linalg_pinv.atol_rtol_tensor, _pinv)


# ---- matrix exponential ---------------------------------------------------------------------------------------

def _block_toeplitz(a: Tensor) -> Tensor:
    r"""The upper block-triangular Toeplitz matrix of a matrix series, block (i, j) = :math:`A_{j-i}` for j >= i and
    0 below; a: (K+1, ..., n, n) -> (..., (K+1) n, (K+1) n). It maps the truncated series
    :math:`\sum_k A_k t^k \bmod t^{K+1}` to matrices, products to products."""
    size, n = a.shape[0], a.shape[-1]
    i, j = torch.meshgrid(torch.arange(size, device=a.device), torch.arange(size, device=a.device), indexing="ij")
    blocks = a.index_select(0, (j - i).clamp(min=0).flatten()) * (j >= i).flatten().view(-1, *([1] * (a.dim() - 1)))
    blocks = blocks.view(size, size, *a.shape[1:])  # (K+1, K+1, ..., n, n), block (i, j)
    return blocks.movedim((0, 1), (-4, -2)).reshape(*a.shape[1:-2], size * n, size * n)


def _matrix_exp(a: Jet) -> Jet:
    r"""``linalg_matrix_exp(A)``: the series of :math:`\exp A(t)`, by the exponential of the block Toeplitz matrix
    of the series (``_block_toeplitz``): since that map is a homomorphism of the truncated series' algebra, the first
    block row of :math:`\exp M` is :math:`E_0, E_1, \dots, E_K`, the coefficients of :math:`\exp A(t)`

    .. math::
        \exp\begin{pmatrix} A_0 & A_1 & \cdots & A_K \\ & A_0 & \ddots & \vdots \\ & & \ddots & A_1 \\
        & & & A_0 \end{pmatrix} = \begin{pmatrix} E_0 & E_1 & \cdots & E_K \\ & E_0 & \ddots & \vdots \\
        & & \ddots & E_1 \\ & & & E_0 \end{pmatrix}

    (for K = 1, Van Loan's formula of the Fréchet derivative). One exponential of a (K+1) n matrix; any A, no
    condition on its eigenvalues. The primal is the op's."""
    _real("aten.linalg_matrix_exp", A=a)
    size, n = a.series.shape[0], a.shape[-1]
    first_row = torch.linalg.matrix_exp(_block_toeplitz(a.series))[..., :n, :]  # (..., n, (K+1) n)
    higher = first_row.unflatten(-1, (size, n)).movedim(-2, 0)[1:]  # (K, ..., n, n)
    return _with_primal(aten.linalg_matrix_exp(a.primal), higher)


register_rule(aten.linalg_matrix_exp.default, _matrix_exp)


# ---- determinants -----------------------------------------------------------------------------------------------

def _log_abs_det_higher(a: Tensor) -> Tensor:
    r"""The coefficients :math:`\ell_1 .. \ell_K` of :math:`\ell = \log|\det A|`: since
    :math:`\ell' = \operatorname{tr}(A^{-1} A')`,

    .. math::
        k\,\ell_k = \sum_{j=1}^{k} j \operatorname{tr}\bigl(A_j B_{k-j}\bigr),

    with B the inverse series up to :math:`B_{K-1}`; a: (K+1, ..., n, n) -> (K, ...)."""
    order = a.shape[0] - 1
    inverse = _inverse_series(a[:order], torch.linalg.inv_ex(a[0])[0])  # B_0 .. B_{K-1}
    out = []
    for k in range(1, order + 1):
        j = torch.arange(1, k + 1, dtype=a.dtype, device=a.device).view(-1, *([1] * (a.dim() - 3)))
        traces = (a[1:k + 1] * inverse[:k].flip(0).mT).sum((-2, -1))  # tr(A_j B_{k-j}), j = 1..k
        out.append((j * traces).sum(0) * (1.0 / k))
    return torch.stack(out)


def _slogdet(a: Jet) -> tuple[Tensor, Jet, Tensor, Tensor]:
    r"""``_linalg_slogdet(A) -> (sign, logabsdet, LU, pivots)``: the op's :math:`\ell_0`, then
    :math:`k\,\ell_k = \sum_{j=1}^{k} j \operatorname{tr}(A_j B_{k-j})` (``_log_abs_det_higher``). The sign is
    piecewise constant, LU and pivots are the op's: constants."""
    _real("aten._linalg_slogdet", A=a)
    sign, logabsdet, lu, pivots = aten._linalg_slogdet(a.primal)
    return sign, _with_primal(logabsdet, _log_abs_det_higher(a.series)), lu, pivots


def _det(a: Jet) -> tuple[Jet, Tensor, Tensor]:
    r"""``_linalg_det(A) -> (result, LU, pivots)``: :math:`\det A = \det P \prod_i U_{ii}` with A = P L U, so the
    product (``products._product``, a tree of Cauchy products) of the series of U's diagonal (``_lu_series``), times
    the constant :math:`\det P = \pm 1`; the primal is the op's. No inverse of :math:`A_0` enters, only triangular
    solves with its LU factors (the log-determinant's series would need the inverse): each :math:`U_k` divides by a
    pivot and multiplies by it again, so a nearly singular :math:`A_0` keeps its accuracy; an exactly zero pivot
    gives NaN. LU and pivots are the op's."""
    _real("aten._linalg_det", A=a)
    _square("aten._linalg_det", a)
    det0, lu, pivots = aten._linalg_det(a.primal)
    p, l0, u0 = torch.lu_unpack(*torch.linalg.lu_factor_ex(a.primal)[:2])  # of A_0 itself (the op's may be of A^T)
    _, us = _lu_series(a.series, l0, u0, p)
    diagonal = torch.diagonal(us, 0, -2, -1)  # (K+1, ..., n)
    product = _product(diagonal, diagonal.dim() - 1).squeeze(-1) * torch.linalg.det(p)
    return _with_primal(det0, product[1:]), lu, pivots


register_rule(aten._linalg_slogdet.default, _slogdet)
register_rule(aten._linalg_det.default, _det)
