"""Stencils: moment conditions, Theorem 1 against the general solver, and argument checks."""

import math
from fractions import Fraction

import pytest

from fdsm import Stencil, central_stencil, stencil

ORDERS = range(1, 7)


def moment(s: Stencil, t: int) -> float:
    return sum(w * g**t for g, w in zip(s.offsets, s.weights, strict=True))


@pytest.mark.parametrize("accuracy", [2, 4, 6])
@pytest.mark.parametrize("order", ORDERS)
def test_central_stencil_moment_conditions(order, accuracy):
    """sum_i w_i gamma_i^t = T! delta_{tT} for t < T + p, and the moment at t = T + p does not vanish."""
    s = central_stencil(order, accuracy)
    assert s.order == order and s.accuracy == accuracy
    scale = math.factorial(order) * max(abs(g) for g in s.offsets) ** (order + accuracy)
    for t in range(order + accuracy):
        expected = math.factorial(order) if t == order else 0.0
        assert moment(s, t) == pytest.approx(expected, abs=1e-12 * scale)
    assert abs(moment(s, order + accuracy)) > 1e-6


@pytest.mark.parametrize("order", ORDERS)
def test_theorem1_uses_T_plus_1_points_centre_only_for_even_T(order):
    s = central_stencil(order)
    assert len(s) == order + 1
    assert (0.0 in s.offsets) == (order % 2 == 0)
    assert sorted(s.offsets) == sorted(-g for g in s.offsets)  # symmetric


@pytest.mark.parametrize("extra_pairs", [0, 1, 2])
@pytest.mark.parametrize("order", ORDERS)
def test_theorem1_vandermonde_matches_general_solver(order, extra_pairs):
    """Theorem 1's Vandermonde construction and Lemma 1's general solve give the same weights on the same points,
    for uneven alphas and for the higher-accuracy stencils (one more pair +-alpha per 2 orders)."""
    alphas = tuple(0.25 * 3**k for k in range((order + 1) // 2 + extra_pairs))  # 0.25, 0.75, 2.25, ...
    accuracy = 2 + 2 * extra_pairs
    theorem1 = central_stencil(order, accuracy, alphas)
    general = stencil(order, theorem1.offsets)
    assert general.offsets == theorem1.offsets
    assert general.weights == pytest.approx(theorem1.weights, rel=1e-14, abs=1e-14)
    assert general.accuracy == theorem1.accuracy == accuracy


def test_known_weights():
    assert central_stencil(2).weights == (1.0, -2.0, 1.0)  # eq. (8)
    assert central_stencil(1).weights == (-0.5, 0.5)
    assert central_stencil(4).weights == (1.0, -4.0, 6.0, -4.0, 1.0)
    assert central_stencil(1, accuracy=4).weights == pytest.approx((1 / 12, -2 / 3, 2 / 3, -1 / 12))


def test_general_stencil_one_sided_accuracy_and_zero_weight_points_dropped():
    forward = stencil(1, [0, 1, 2])  # second-order one-sided first derivative
    assert forward.weights == pytest.approx((-1.5, 2.0, -0.5)) and forward.accuracy == 2
    central = stencil(1, [-1, 0, 1])  # the centre weight is exactly zero, so no forward is spent on it
    assert central.offsets == (-1.0, 1.0) and central.accuracy == 2
    assert stencil(2, [Fraction(-1, 3), 0, Fraction(1, 3)]).weights == pytest.approx((9.0, -18.0, 9.0))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: central_stencil(0), ValueError, "order >= 1"),
        (lambda: central_stencil(2.0), TypeError, "int"),
        (lambda: central_stencil(True), TypeError, "int"),
        (lambda: central_stencil(2, accuracy=3), ValueError, "even accuracy"),
        (lambda: central_stencil(2, alphas=(1.0, 2.0)), ValueError, "needs 1 alphas"),
        (lambda: central_stencil(3, alphas=(1.0, -2.0)), ValueError, "positive"),
        (lambda: central_stencil(3, alphas=(1.0, 1.0)), ValueError, "distinct"),
        (lambda: stencil(2, [0, 1]), ValueError, "at least 3 offsets"),
        (lambda: stencil(1, [0, 1, 1]), ValueError, "distinct"),
        (lambda: stencil(1, [0, float("nan")]), ValueError, "finite"),
        (lambda: stencil(1, [0, "1"]), TypeError, "real numbers"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
