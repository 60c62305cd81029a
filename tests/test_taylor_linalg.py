"""Taylor rules of dense linear algebra (``fdsm.taylor.rules.linalg``) against nested autograd.

Every case is float64, 3x3 matrices in a batch of 2, made well conditioned from x (M(x) + 3I, M(x) M(x)^T + 3I, a
triangle of M(x) + 3I) with M(x) and the right-hand side nonlinear in x, so that every coefficient A_k, k >= 2,
enters the recurrences. f(z) = op(z).flatten(1) @ w with distinct weights w, against exact-reverse to 1e-10 of the
largest |D^T| (both exact; they differ by rounding, observed below 3e-15), at orders 1..4. Each case names the aten op
whose rule it exercises, and checks that the trace contains it.
"""

import re
from fractions import Fraction

import pytest
import torch
from torch.distributions import MultivariateNormal

from fdsm import NotSupported
from fdsm.taylor import Jet
from fdsm.taylor.rules import linalg, rule_for
from fdsm.taylor.trace import traced
from tests.test_taylor import F64, assert_agree, rand, reverse_d, taylor_d

aten = torch.ops.aten
pytestmark = [pytest.mark.filterwarnings("ignore:torch.cholesky is deprecated:UserWarning"),  # the deprecated ops'
              pytest.mark.filterwarnings("ignore:torch.triangular_solve is deprecated:UserWarning")]  # rules
N = 3
EYE = torch.eye(N, dtype=F64)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: a second intra-op thread only adds synchronization (as in tests/test_taylor.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def m(z, part=0):
    """A 3x3 matrix per sample, nonlinear in x (every Taylor coefficient nonzero): from x[:, 9 part : 9 part + 9]."""
    return 0.4 * torch.sin(1.3 * z[:, 9 * part:9 * part + 9] + 0.5).view(-1, N, N)


def general(z):
    return m(z) + 3 * EYE


def flipped(z):
    """A general matrix with two rows swapped: a negative determinant."""
    return general(z)[:, [1, 0, 2]]


def spd(z):
    a = m(z)
    return a @ a.mT + 3 * EYE


def separated(z):
    """A symmetric matrix with eigenvalues about 1 apart (eigh's coefficients divide by their gaps)."""
    return spd(z) + torch.diag(torch.tensor([0.0, 1.5, 3.0], dtype=F64))


def wide(z):
    """A 3 x 4 matrix with singular values about 1 apart (the rule divides by the gaps of their squares)."""
    return torch.sin(1.3 * z[:, :12] + 0.5).view(-1, 3, 4) + torch.eye(3, 4, dtype=F64) * torch.tensor(
        [2.0, 1.0, 0.0], dtype=F64)[:, None]


def matrix_exp_by_eigh(a):
    values, vectors = torch.linalg.eigh(a)
    return (vectors * torch.exp(values).unsqueeze(-2)) @ vectors.mT


def lower(z, part=0):
    return torch.tril(m(z, part)) + 3 * EYE


def upper(z, part=0):
    return torch.triu(m(z, part)) + 3 * EYE


def rhs(z, columns=2):
    """A right-hand side (B, 3, columns), nonlinear in x: from x[:, 18:] (up to 9 entries)."""
    return torch.cos(0.9 * z[:, 18:18 + N * columns] - 0.2).view(-1, N, columns)


def tall_rhs(z):
    """A right-hand side (B, 4, 2) for the 4 x 3 matrix ``wide(z).mT``: from x[:, 18:26]."""
    return torch.cos(0.9 * z[:, 18:26] - 0.2).view(-1, 4, 2)


A_C = rand(N, N, seed=11, scale=0.4) + 3 * EYE  # constant (unbatched: broadcast against the batch)
L_C = torch.tril(rand(N, N, seed=12, scale=0.4)) + 3 * EYE
S_C = A_C @ A_C.mT
R_C = rand(N, 2, seed=13)
TALL_C = rand(4, N, seed=15, scale=0.4) + torch.eye(4, N, dtype=F64)  # constant 4 x 3 of full column rank
TALL_RHS_C = rand(4, 2, seed=16)
MEAN = rand(N, seed=14)


def lu_solve(a, b, **kwargs):
    return torch.linalg.lu_solve(*torch.linalg.lu_factor(a), b, **kwargs)


def solution_and_residuals(a, b, **kwargs):
    return torch.cat([out.flatten(1) for out in torch.linalg.lstsq(a, b, **kwargs)[:2]], 1)


def mvn(z, **matrix):
    return MultivariateNormal(MEAN, validate_args=False, **matrix).log_prob(torch.sin(z[:, 18:18 + N]))[:, None]


# name -> (the aten op whose rule it exercises, op(z))
CASES = {
    "inv": (aten.linalg_inv_ex, lambda z: torch.linalg.inv(general(z))),
    "solve-jet-matrix": (aten._linalg_solve_ex, lambda z: torch.linalg.solve(general(z), R_C)),
    "solve-jet-rhs": (aten._linalg_solve_ex, lambda z: torch.linalg.solve(A_C, rhs(z))),
    "solve-jet-both": (aten._linalg_solve_ex, lambda z: torch.linalg.solve(general(z), rhs(z))),
    "solve-vector-rhs": (aten._linalg_solve_ex, lambda z: torch.linalg.solve(general(z), rhs(z, 1)[..., 0])),
    "solve-left-false": (aten._linalg_solve_ex, lambda z: torch.linalg.solve(general(z), rhs(z, 3).mT, left=False)),
    "solve-broadcast-batch": (aten._linalg_solve_ex, lambda z: torch.linalg.solve(
        general(z)[:, None], torch.stack([rhs(z), rhs(z) ** 2, R_C.expand(2, N, 2)], 1))),  # (B, 1) against (B, 3)
    "solve_triangular-jet-matrix": (aten.linalg_solve_triangular,
                                    lambda z: torch.linalg.solve_triangular(lower(z), R_C, upper=False)),
    "solve_triangular-jet-rhs-upper": (aten.linalg_solve_triangular,
                                       lambda z: torch.linalg.solve_triangular(L_C.mT, rhs(z), upper=True)),
    "solve_triangular-unitriangular": (aten.linalg_solve_triangular, lambda z: torch.linalg.solve_triangular(
        general(z), rhs(z), upper=False, unitriangular=True)),  # reads the strict lower triangle only
    "solve_triangular-left-false-upper": (aten.linalg_solve_triangular, lambda z: torch.linalg.solve_triangular(
        general(z), rhs(z, 3).mT, upper=True, left=False)),  # reads the upper triangle only
    "triangular_solve-jet-matrix": (aten.triangular_solve,
                                    lambda z: torch.triangular_solve(R_C, general(z), upper=False)[0]),
    "triangular_solve-transpose-both": (aten.triangular_solve, lambda z: torch.cat(
        torch.triangular_solve(rhs(z), upper(z), upper=True, transpose=True), -1)),  # and the cloned coefficient
    "triangular_solve-unitriangular-rhs": (aten.triangular_solve, lambda z: torch.triangular_solve(
        rhs(z), L_C, upper=False, unitriangular=True)[0]),
    "cholesky": (aten.linalg_cholesky_ex, lambda z: torch.linalg.cholesky(spd(z))),
    "cholesky-upper": (aten.linalg_cholesky_ex, lambda z: torch.linalg.cholesky(spd(z), upper=True)),
    "cholesky-deprecated": (aten.cholesky, lambda z: torch.cholesky(spd(z))),
    "cholesky_solve-jet-factor": (aten.cholesky_solve, lambda z: torch.cholesky_solve(R_C.expand(2, N, 2), lower(z))),
    "cholesky_solve-jet-rhs": (aten.cholesky_solve, lambda z: torch.cholesky_solve(rhs(z), L_C)),
    "cholesky_solve-both-upper": (aten.cholesky_solve,
                                  lambda z: torch.cholesky_solve(rhs(z), upper(z), upper=True)),
    "cholesky_solve-broadcast-batch": (aten.cholesky_solve, lambda z: torch.cholesky_solve(
        torch.stack([rhs(z), rhs(z) ** 2], 1), lower(z)[:, None])),
    "cholesky_inverse": (aten.cholesky_inverse, lambda z: torch.cholesky_inverse(lower(z))),
    "slogdet": (aten._linalg_slogdet, lambda z: torch.linalg.slogdet(general(z))[1][:, None]),
    "slogdet-negative-sign-logdet": (aten._linalg_slogdet, lambda z: torch.stack(
        [torch.linalg.slogdet(flipped(z))[1], torch.logdet(spd(z)), torch.linalg.slogdet(flipped(z))[0] * 0.5], -1)),
    "det": (aten._linalg_det, lambda z: torch.linalg.det(flipped(z))[:, None]),
    "lu_factor": (aten.linalg_lu_factor_ex, lambda z: torch.linalg.lu_factor(flipped(z))[0]),
    "lu_solve-both": (aten.linalg_lu_solve, lambda z: lu_solve(flipped(z), rhs(z))),
    "lu_solve-adjoint-left-false": (aten.linalg_lu_solve,
                                    lambda z: lu_solve(flipped(z), rhs(z, 3).mT, adjoint=True, left=False)),
    "lu": (aten.linalg_lu, lambda z: torch.cat(torch.linalg.lu(flipped(z))[1:], -1)),
    "eigvalsh": (aten._linalg_eigh, lambda z: torch.linalg.eigvalsh(separated(z))),
    "eigh-matrix-function": (aten._linalg_eigh, lambda z: matrix_exp_by_eigh(separated(z))),
    "eigh-vectors": (aten._linalg_eigh, lambda z: torch.linalg.eigh(separated(z))[1] ** 2),  # signs cancel
    "svdvals-wide-tall": (aten._linalg_svd, lambda z: torch.cat([torch.linalg.svdvals(wide(z)),
                                                                 torch.linalg.svdvals(wide(z).mT) ** 2], -1)),
    "spectral-nuclear-norm-cond": (aten._linalg_svd, lambda z: torch.stack([
        torch.linalg.matrix_norm(wide(z), 2), torch.linalg.matrix_norm(wide(z), "nuc"),
        torch.linalg.cond(wide(z)[:, :, :3]), torch.linalg.svd(wide(z))[1][:, 1]], -1)),
    "qr-tall": (aten.linalg_qr, lambda z: torch.cat([f.flatten(1) for f in torch.linalg.qr(wide(z).mT)], 1)),
    "qr-square-complete": (aten.linalg_qr, lambda z: torch.cat(torch.linalg.qr(general(z), "complete"), -1)),
    "lstsq-both": (aten.linalg_lstsq, lambda z: torch.linalg.lstsq(wide(z).mT, tall_rhs(z)).solution),
    "lstsq-vector-residuals": (aten.linalg_lstsq, lambda z: torch.cat(torch.linalg.lstsq(
        wide(z).mT, tall_rhs(z)[..., 0], driver="gelsd")[:2], -1)),
    "lstsq-constant-matrix": (aten.linalg_lstsq, lambda z: torch.linalg.lstsq(A_C.expand(len(z), N, N), rhs(z))[0]),
    "lstsq-residuals-constant-rhs": (aten.linalg_lstsq, lambda z: solution_and_residuals(
        wide(z).mT, TALL_RHS_C.expand(len(z), 4, 2), driver="gelsd")),
    "lstsq-residuals-constant-matrix": (aten.linalg_lstsq, lambda z: solution_and_residuals(
        TALL_C.expand(len(z), 4, N), tall_rhs(z), driver="gelss")),
    "pinv-tall-wide": (aten.linalg_pinv, lambda z: torch.cat([torch.linalg.pinv(wide(z)).flatten(1),
                                                              torch.linalg.pinv(wide(z).mT).flatten(1)], 1)),
    "pinv-hermitian": (aten.linalg_pinv, lambda z: torch.linalg.pinv(spd(z), hermitian=True)),
    "matrix_exp": (aten.linalg_matrix_exp, lambda z: torch.linalg.matrix_exp(m(z, 1) * 3)),
    "matrix_exp-batched": (aten.linalg_matrix_exp, lambda z: torch.linalg.matrix_exp(
        torch.stack([general(z), m(z, 1) - 2 * EYE], 1))),
    "mvn-scale_tril": (aten.linalg_solve_triangular, lambda z: mvn(z, scale_tril=lower(z))),
    "mvn-covariance": (aten.linalg_cholesky_ex, lambda z: mvn(z, covariance_matrix=spd(z))),
    "mvn-precision": (aten.linalg_cholesky_ex, lambda z: mvn(z, precision_matrix=spd(z))),
}
X, V = rand(2, 27, seed=1), rand(2, 27, seed=2)


def weighted(op):
    w = torch.cos(1.7 * torch.arange(op(X).flatten(1).shape[1], dtype=F64) + 0.3)  # distinct weights
    return lambda z: op(z).flatten(1) @ w


def ops_in_trace(f):
    graph, _ = traced(f, X)
    return {getattr(node.target, "overloadpacket", node.target) for node in graph.graph.nodes}


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("name", CASES)
def test_linalg_rules_match_exact_reverse(name, order):
    op, fn = CASES[name]
    f = weighted(fn)
    if order == 1:
        assert op in ops_in_trace(f)
    assert_agree(taylor_d(f, X, V, order), reverse_d(f, X, V, order), rtol=1e-10)


# The rules differentiate what the op computes, from the part of its matrix that it reads. Where f passes more
# (a factor with entries above its diagonal, a non-symmetric matrix to a Cholesky factorization) nested autograd
# differentiates what the op ignores: Taylor mode agrees with autograd on the part that is read, not on the input.
def junk_above(z):
    return lower(z) + torch.triu(m(z, 1), 1)


READ_PART = {
    "cholesky-of-non-symmetric": (lambda z: torch.linalg.cholesky(spd(z) + torch.tril(m(z, 1), -1)),
                                  lambda z: torch.linalg.cholesky(spd(z) + torch.tril(m(z, 1), -1)
                                                                  + torch.tril(m(z, 1), -1).mT)),
    "cholesky-upper-of-non-symmetric": (lambda z: torch.linalg.cholesky(spd(z) + torch.triu(m(z, 1), 1), upper=True),
                                        lambda z: torch.linalg.cholesky(spd(z) + torch.triu(m(z, 1), 1)
                                                                        + torch.triu(m(z, 1), 1).mT, upper=True)),
    "eigvalsh-upper-of-non-symmetric": (lambda z: torch.linalg.eigvalsh(separated(z) + torch.triu(m(z, 1), 1), "U"),
                                        lambda z: torch.linalg.eigvalsh(separated(z) + torch.triu(m(z, 1), 1)
                                                                        + torch.triu(m(z, 1), 1).mT, "U")),
    "pinv-hermitian-of-non-symmetric": (lambda z: torch.linalg.pinv(spd(z) + torch.tril(m(z, 1), -1), hermitian=True),
                                        lambda z: torch.linalg.pinv(spd(z) + torch.tril(m(z, 1), -1)
                                                                    + torch.tril(m(z, 1), -1).mT, hermitian=True)),
    "cholesky_solve-of-a-full-factor": (lambda z: torch.cholesky_solve(rhs(z), junk_above(z)),
                                        lambda z: torch.cholesky_solve(rhs(z), torch.tril(junk_above(z)))),
    "cholesky_inverse-of-a-full-factor": (lambda z: torch.cholesky_inverse(junk_above(z)),
                                          lambda z: torch.cholesky_inverse(torch.tril(junk_above(z)))),
}


@pytest.mark.parametrize("name", READ_PART)
def test_rules_differentiate_the_part_of_the_matrix_the_op_reads(name):
    given, read = map(weighted, READ_PART[name])
    assert torch.allclose(given(X), read(X), rtol=1e-13, atol=0)  # the op ignores the rest
    taylor, on_read = taylor_d(given, X, V, 2), reverse_d(read, X, V, 2)
    assert_agree(taylor, on_read, rtol=1e-10)
    assert (reverse_d(given, X, V, 2) - on_read).abs().max() > 1e-3 * on_read.abs().max()  # autograd's convention


@pytest.mark.parametrize("name", ["slogdet", "solve", "matrix_exp", "qr"])
def test_parameter_gradients_match_exact_reverse(name):
    """The gradient of D^T in a tensor that f closes over: the rules are torch ops, differentiable in it."""
    p = rand(N, N, seed=21, scale=0.3).requires_grad_()
    w = torch.cos(1.7 * torch.arange(2 * N, dtype=F64))
    if name == "slogdet":
        f = lambda z: torch.linalg.slogdet(general(z) + p)[1]  # noqa: E731
    elif name == "solve":
        f = lambda z: torch.linalg.solve(spd(z) + p @ p.mT, rhs(z) + p[:, :2]).flatten(1) @ w  # noqa: E731
    elif name == "matrix_exp":
        f = lambda z: torch.linalg.matrix_exp(m(z) * p)[:, :2].flatten(1) @ w  # noqa: E731
    else:
        f = lambda z: torch.linalg.qr(general(z) + p)[0][:, :2].flatten(1) @ w  # noqa: E731
    for order in (2, 3):
        reverse, = torch.autograd.grad(reverse_d(f, X, V, order).sum(), p)
        taylor, = torch.autograd.grad(taylor_d(f, X, V, order).sum(), p)
        assert reverse.abs().max() > 0
        assert_agree(taylor, reverse, rtol=1e-8)


def test_a_complex_matrix_is_refused_naming_the_op_and_the_argument():
    a = Jet(torch.randn(3, 2, N, N, dtype=torch.complex128))
    with pytest.raises(NotSupported, match=r"aten\.linalg_inv_ex takes real matrices; its argument A is "):
        rule_for(aten.linalg_inv_ex.default)(a)
    with pytest.raises(NotSupported, match=r"aten\._linalg_solve_ex takes real matrices; its argument B is "):
        rule_for(aten._linalg_solve_ex.default)(A_C, Jet(torch.randn(3, 2, N, 2, dtype=torch.complex128)))


def test_the_lu_of_a_non_square_matrix_is_refused_naming_the_op():
    with pytest.raises(NotSupported, match=re.escape("aten.linalg_lu_factor_ex takes square matrices")):
        taylor_d(lambda z: torch.linalg.lu_factor(general(z)[:, :, :2])[0].flatten(1).sum(1), X, V, 2)


def test_an_op_left_without_a_rule_still_raises_naming_it():
    with pytest.raises(NotSupported, match=re.escape("no Taylor rule for the aten op aten.linalg_eig")):
        taylor_d(lambda z: torch.linalg.eigvals(general(z)).real.sum(1), X, V, 2)


def test_qr_mode_r_gives_the_r_of_the_reduced_factorization():
    """Nested autograd cannot differentiate mode 'r' (its backward needs Q): the reference is the reduced R."""
    only_r, reduced = (weighted(lambda z, mode=mode: torch.linalg.qr(wide(z).mT, mode)[1]) for mode in ("r", "reduced"))
    for order in (1, 3):
        assert_agree(taylor_d(only_r, X, V, order), reverse_d(reduced, X, V, order), rtol=1e-10)


@pytest.mark.parametrize("f, match", [
    (lambda z: torch.linalg.qr(wide(z))[1], r"aten\.linalg_qr takes matrices with at least as many rows as columns"),
    (lambda z: torch.linalg.qr(wide(z).mT, "complete")[0], r"the columns that mode 'complete' adds to Q are not"),
    (lambda z: torch.linalg.lstsq(wide(z), rhs(z)).solution, r"aten\.linalg_lstsq takes matrices with at least"),
    (lambda z: torch.linalg.lstsq(wide(z).mT[..., [0, 1, 1]], tall_rhs(z)).solution,
     r"aten\.linalg_lstsq takes matrices of full rank; this one has rank 2 of 3"),
    (lambda z: torch.linalg.lstsq(wide(z).mT[..., [0, 1, 1]], tall_rhs(z), driver="gels").solution,
     r"aten\.linalg_lstsq takes matrices of full rank; this one has rank 2 of 3"),  # gels reports no rank
    (lambda z: torch.linalg.pinv(wide(z)[:, [0, 1, 1]]), r"aten\.linalg_pinv takes matrices of full rank; this one"),
    (lambda z: torch.linalg.lstsq(wide(z).mT, tall_rhs(z), driver="gelsd").singular_values,
     r"aten\.linalg_lstsq gives the solution and the residuals, not the singular values"),
])
def test_qr_least_squares_and_pinv_refuse_what_their_rules_do_not_compute(f, match):
    with pytest.raises(NotSupported, match=match):
        taylor_d(weighted(f), X, V, 2)


@pytest.mark.parametrize("which", [0, 2])
def test_a_use_of_the_singular_vectors_is_refused(which):
    """The SVD's rule computes the singular values only; U or Vh, read by f, raise rather than act as constants."""
    with pytest.raises(NotSupported, match=r"aten\._linalg_svd gives the singular values only"):
        taylor_d(lambda z: torch.linalg.svd(wide(z))[which].flatten(1).sum(1), X, V, 2)


def test_a_multivariate_normal_with_its_default_argument_checks_is_traced_and_an_invalid_covariance_still_fails(
        monkeypatch):
    """The checks are a data-dependent branch: they are off while f is traced (``_unvalidated_distributions``), and
    on again afterwards; a covariance that is not positive definite fails in its factorization instead. (The default
    is set here: the first ``torch.compile`` of the process, as in tests/test_taylor_compiled.py, turns it off.)"""
    monkeypatch.setattr(torch.distributions.Distribution, "_validate_args", True)
    f = lambda z: MultivariateNormal(MEAN, scale_tril=lower(z)).log_prob(torch.sin(z[:, 18:21]))  # noqa: E731
    assert_agree(taylor_d(f, X, V, 2), reverse_d(f, X, V, 2), rtol=1e-10)
    assert torch.distributions.Distribution._validate_args
    indefinite = lambda z: MultivariateNormal(MEAN, covariance_matrix=-spd(z)).log_prob(MEAN)  # noqa: E731
    with pytest.raises(torch.linalg.LinAlgError, match="not positive-definite"):
        taylor_d(indefinite, X, V, 2)


def exact_det_derivatives(a, v, order):
    """D^1..D^order of det(A + t V) for a 3 x 3 A and V, exactly, in rationals: the cubic's coefficients times k!."""
    def det(m):
        return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))

    a, v = ([[Fraction(float(e)) for e in row] for row in m.tolist()] for m in (a, v))
    values = [det([[a[i][j] + t * v[i][j] for j in range(3)] for i in range(3)]) for t in range(4)]
    # the cubic through t = 0..3, by Newton's forward differences: D^k at 0 from the differences
    diffs = [values]
    for _ in range(3):
        diffs.append([b - c for b, c in zip(diffs[-1][1:], diffs[-1][:-1], strict=False)])
    d1 = diffs[1][0] - diffs[2][0] / 2 + diffs[3][0] / 3
    d2 = diffs[2][0] - diffs[3][0]
    d3 = diffs[3][0]
    return [float(d) for d in (d1, d2, d3)][:order]


def test_det_of_a_nearly_singular_matrix_is_exact():
    """Rows 1..9 / 10 (singular in the reals, not quite in float64): the product of U's diagonal keeps det's
    derivatives to rounding, where nested autograd is 4% off at T = 3 (and a logdet-based series was 1e15 off)."""
    a, v = torch.arange(1.0, 10.0, dtype=F64).view(1, 3, 3) / 10, rand(1, 3, 3, seed=3)
    f = lambda z: torch.linalg.det(z.view(-1, 3, 3))[:, None]  # noqa: E731
    for order, expected in enumerate(exact_det_derivatives(a[0], v[0], 3), start=1):
        got = taylor_d(f, a.flatten(1), v.flatten(1), order).item()
        assert abs(got - expected) <= 1e-12 * max(1.0, abs(expected)), (order, got, expected)


@pytest.mark.xfail(strict=True, reason="det's rule, det P times the product of U's diagonal series, divides by each "
                   "pivot of A_0 and multiplies by it again: at an exactly singular A_0 (a zero pivot) it is NaN, "
                   "where det's derivatives (the adjugate's) are finite and nested autograd gives them")
def test_det_at_a_singular_matrix_matches_exact_reverse():
    singular = torch.tensor([[1.0, 2.0, 2.0, 4.0]], dtype=F64)
    f = lambda z: torch.linalg.det(z.view(-1, 2, 2))[:, None]  # noqa: E731
    v = torch.tensor([[0.3, -0.2, 0.5, 0.1]], dtype=F64)
    assert_agree(taylor_d(f, singular, v, 2), reverse_d(f, singular, v, 2), rtol=1e-10)


def test_the_module_is_registered_by_the_package():
    assert rule_for(aten._linalg_slogdet.default) is linalg._slogdet
