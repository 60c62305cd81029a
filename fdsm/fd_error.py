r"""FD that says how far off it is: an automatic step, Richardson extrapolation, and an error estimate per sample.

A stencil of accuracy p (``fdsm.stencils``) evaluated at a step h along the unit direction
:math:`u = v/\lVert v\rVert` gives

.. math::
    D_h = h^{-T} \sum_i w_i\, f(x + \gamma_i h u) = (u^\top\nabla)^T f(x) + c\, h^p + O(h^{p+2}) + \text{roundoff},
    \qquad D^T_v f(x) = \lVert v\rVert^T D_h                                                        \tag{S1}

(paper eq. 4: :math:`D^T_v f = \varepsilon^T \partial^T_u f` with :math:`\varepsilon = \lVert v\rVert`). So the step
h can be chosen freely and the result still means the derivative along the given v: the stencil runs at step h
along v/|v| and is rescaled by :math:`(\lVert v\rVert/h)^T`. The error of :math:`D_h` has two parts,

.. math::
    \tau(h) = \frac{\lvert D_h - D_{h/2}\rvert}{1 - 2^{-p}} \approx \lvert c\rvert h^p \quad\text{(truncation)},
    \qquad
    \rho(h) = \kappa\, \frac{u_{\mathrm{dtype}} \big(\sum_i w_i^2 f_i^2\big)^{1/2}}{h^T} \quad\text{(roundoff)},
                                                                                                        \tag{S2}

with :math:`f_i = f(x + \gamma_i h u)` and :math:`u_{\mathrm{dtype}}` the unit roundoff (2^-24 in float32). The
first holds because :math:`D_h - D_{h/2} = c h^p (1 - 2^{-p}) + O(h^{p+2})`. The second is the rms of
:math:`\sum_i w_i e_i / h^T` for independent rounding errors of size :math:`u\lvert f_i\rvert`; the worst case is
the familiar :math:`u \lvert f\rvert \sum_i \lvert w_i\rvert / h^T`, the rms is what a median error tracks, and
:math:`\kappa` calibrates it against f's own arithmetic (NOTE [reading the probe ladder]). With C and
:math:`R = \rho(h) h^T` read from probes of f, the error model and its minimum are (anchors section 5)

.. math::
    E(h) = C h^p + R h^{-T}, \qquad h^* = \Big(\frac{T R}{p C}\Big)^{1/(T+p)}, \qquad
    E(h^*) = C {h^*}^p \big(1 + p/T\big).                                                                \tag{S3}

Richardson extrapolation cancels the leading truncation term of the steps h and h/2,

.. math::
    D^R_h = \frac{2^p D_{h/2} - D_h}{2^p - 1} = (u^\top\nabla)^T f(x) + O(h^{p+2}),                      \tag{S4}

which is itself a stencil, on the offsets :math:`\{\gamma_i\} \cup \{\gamma_i/2\}` (``richardson_stencil``): its
extra points join the same stacked forward, and the automatic step treats it like any stencil of accuracy p + 2.

The probes: one stacked forward of f, without a graph (NOTE [point-major stacked batch] in ``fdsm.fd``), evaluates
the stencil at the seven steps :math:`h_0 2^j`, j = -3..3, around a first guess :math:`h_0` (``first_guess``);
each pair (h, h/2) gives its truncation and roundoff, and the model (S3) gives :math:`h^*` (NOTE [reading the
probe ladder]). A sample whose ladder does not bracket its optimum gets another forward around a better centre
(2-3 forwards in all on the trained deep EBM). Then one forward of the chosen FD method at the chosen steps, with
the graph, gives the result.

``fd_estimate(f, x, v, order)`` returns the derivative, the per-sample estimated *relative* error
:math:`E(h)/\lVert D_h\rVert` (the rms of truncation plus roundoff, :math:`\sqrt{\tau^2 + \rho^2}`) and the
step used (``FDEstimate``); ``directional_derivative(..., step="auto")`` returns the derivative alone.

>>> f = lambda x: torch.exp(x[:, 0])                     # d^3/dt^3 exp(x + t) = exp(x), along v = e_0
>>> x = torch.tensor([[0.3, 0.0], [1.2, 0.0]], dtype=torch.float64)
>>> est = fd_estimate(f, x, torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64), 3)
>>> true = ((est.derivative - torch.exp(x[:, 0])) / torch.exp(x[:, 0])).abs()
>>> bool((true < 1e-8).all()), bool((est.rel_error < 1e-8).all()), est.derivative.shape
(True, True, torch.Size([2]))
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from fdsm import fd
from fdsm.stencils import Stencil, _build, central_stencil, check_order, exact_weights

Fn = Callable[[Tensor], Tensor]

TOLERANCE = 0.01  # the relative error a result must reach, or be flagged (the paper's 1% bound)
LADDER = 3  # a probe forward evaluates the stencil at h_0 2^j, j = -LADDER..LADDER: a span of 2^6 = 64
MAX_PROBES = 5  # probe forwards before taking the best bracket found
DOMINANT = 3.0  # a pair difference measures truncation where it exceeds this many times its roundoff
_WHO = "fd_estimate(f, x, v, order)"


# NOTE [default accuracy of the automatic step]
# With step="auto" and no stencil, the accuracy p is the one whose automatic step had the smallest measured error on
# the trained deep EBM, among the stencils whose error estimate holds on the closed forms of
# tests/test_fd_estimate.py: results/cpu/auto-step/summary.md, section "The automatic step's error by stencil"
# (float32, p = 4, 6, 8, p = 2 at T = 6, and the Richardson stencils, against the float64 exact value), and
# README.md there.
# - float32: p = 4 at T = 1, 3, 4, 5; p = 6 at T = 2; p = 2 at T = 6. At T = 1, p = 6 and 8 are only slightly
#   better, at up to twice the points and the probe time. A higher p lowers the error at T = 3..6 on the deep
#   EBM, but its estimate does not hold there: on the softplus networks of the tests, p = 6 at T = 3
#   over-reads its error on the roundoff side of a fixed step, and p = 6, 8 at T = 4..6 under-read it at the
#   automatic step, where their optimum lies past the range in which the pair (h, h/2) sees h^p (NOTE [reading the
#   probe ladder]). An under-read is a silently bad number, so such a stencil stays the caller's explicit choice.
#   Orders above 6 were not measured; they get p = 2, the choice of T = 6.
# - float64: p = 4 at every T (results/cpu/eps_sweep.csv: its best grid step beats p = 2's by a wide margin).
# - bfloat16 and float16: p = 2; nothing reaches 1% past T = 2 (results/cpu/eps_sweep.csv, and the bfloat16 rows of
#   results/cpu/auto-step/summary.md), and more points only add roundoff.
# The plain methods keep the paper's stencil (p = 2, Theorem 1) as their default: Figure 2 compares against it.
_FLOAT32_ACCURACY = {1: 4, 2: 6, 3: 4, 4: 4, 5: 4}  # T -> p in float32; higher T: p = 2


def default_accuracy(order: int, dtype: torch.dtype) -> int:
    """The stencil accuracy p of ``step="auto"`` without a stencil (NOTE [default accuracy of the automatic step]).

    >>> [default_accuracy(t, torch.float32) for t in range(1, 7)], default_accuracy(6, torch.float64)
    ([4, 6, 4, 4, 4, 2], 4)
    """
    if dtype == torch.float64:
        return 4
    if dtype == torch.float32:
        return _FLOAT32_ACCURACY.get(order, 2)
    return 2


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = machine epsilon / 2: 2^-24 for float32, 2^-53 for float64, 2^-8 for bfloat16."""
    return torch.finfo(dtype).eps / 2


def richardson_stencil(s: Stencil) -> Stencil:
    r"""Eq. (S4) as one stencil: :math:`(2^p D_{h/2} - D_h)/(2^p - 1)` on the offsets of s and their halves.

    At step h, :math:`D_{h/2}` is s with offsets :math:`\gamma_i/2` and weights :math:`2^T w_i` (the :math:`h^{-T}`
    of eq. S1), so the combined weights are :math:`-w_i/(2^p-1)` at :math:`\gamma_i` and
    :math:`2^{p+T} w_i/(2^p-1)` at :math:`\gamma_i/2`, summed where offsets coincide. They are computed exactly
    from s's exact weights (Fornberg on its offsets, which reproduces s) and rounded once; the accuracy is found
    exactly: p + 2 for a symmetric s.

    >>> r = richardson_stencil(central_stencil(1))                  # (8 (f(h/2) - f(-h/2)) - (f(h) - f(-h))) / 6
    >>> r.offsets, [round(w, 6) for w in r.weights], r.accuracy
    ((-1.0, -0.5, 0.5, 1.0), [0.166667, -1.333333, 1.333333, -0.166667], 4)
    """
    who = "richardson_stencil(s)"
    if not isinstance(s, Stencil):
        raise TypeError(f"{who}: expected a fdsm.Stencil, got {type(s).__name__}")
    T, p = s.order, s.accuracy
    gammas = [Fraction(g) for g in s.offsets]  # exact: a float converts to the rational it stores
    exact = exact_weights(T, gammas)  # Lemma 1: sum_i w_i g_i^t = T! delta_tT
    if any(abs(float(e) - w) > 1e-12 * max(map(abs, s.weights)) for e, w in zip(exact, s.weights, strict=True)):
        raise ValueError(f"{who}: expected the stencil of its offsets {s.offsets} (built by fdsm.stencil or "
                         f"fdsm.central_stencil), got other weights {s.weights}")
    weights: dict[Fraction, Fraction] = {}
    for g, w in zip(gammas, exact, strict=True):
        weights[g] = weights.get(g, Fraction(0)) - w / (2**p - 1)  # -D_h / (2^p - 1)
        weights[g / 2] = weights.get(g / 2, Fraction(0)) + 2 ** (p + T) * w / (2**p - 1)  # 2^p D_{h/2} / (2^p - 1)
    offsets = sorted(weights)
    return _build(T, offsets, [weights[g] for g in offsets])


@dataclass(frozen=True)
class FDEstimate:
    """What ``fd_estimate`` returns. B is the batch; D^T f(x) has the shape of f(x), (B,) or (B, k)."""

    derivative: Tensor  # (B,) or (B, k): D^T f along the given v, as directional_derivative returns it (eq. S1)
    rel_error: Tensor  # (B,) float64: the estimated relative error E(h) / |D_h| at the step used (eq. S3)
    abs_error: Tensor  # (B,) float64: the same, absolute, along the given v (the norm over k for vector outputs)
    step: Tensor  # (B,) float64: the step h used along v/|v|, one per sample (NOTE [a step per sample])
    flagged: Tensor  # (B,) bool: rel_error above the tolerance; with step="auto", no step reaches it
    stencil: Stencil  # the stencil evaluated (the Richardson stencil where asked)
    probe_forwards: int  # stacked forwards of f spent on probes; the result's own forward is not counted
    probe_points: int  # probe evaluations of f per sample (rows of those forwards over B)


class FDAccuracyWarning(UserWarning):
    """An FD result whose estimated error stays above the tolerance (at the best step, with step="auto")."""


# NOTE [a step per sample]
# The step is chosen per sample, not once per batch. The probes already carry one direction per sample (the stacked
# forward evaluates x_b + c h_b u_b), so a step per sample costs no more than one per batch, and the optimum
# h* = (T R / (p C))^(1/(T+p)) moves with each sample's own truncation constant C_b (its (T+p)-th derivative along
# u_b) and roundoff R_b (its |f|): on the trained deep EBM the odd derivatives of one batch differ 30-fold between
# samples, which a shared step would have to compromise on. What is pooled over the batch is the roundoff
# calibration kappa (NOTE [reading the probe ladder]), a property of f's arithmetic that one sample's few pairs
# would measure poorly, except for a sample whose own pairs put it far above the pool. Rows that need one number
# (the bench's `eps` column) report the batch median of the steps.


@dataclass(frozen=True)
class _Ladder:
    """One probe forward's results at the steps h_j = h_0 2^j, j = -J..J (L = 2J + 1 levels), for B samples."""

    step: Tensor  # (L, B) float64: h_j per sample
    d: Tensor  # (L, B, m) float64: D_{h_j} along the unit direction, eq. (S1); m = prod(k), 1 for scalar f
    rho: Tensor  # (L, B) float64: the roundoff of eq. (S2) with kappa = 1
    valid: Tensor  # (L, B) bool: the level's finest point survives rounding (see _representable)

    def pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        """For pair i = (h_{i+1}, h_i = h_{i+1} / 2), i = 0..L-2: |D_h - D_{h/2}|, the rms roundoff of that
        difference (kappa = 1), and whether both levels are valid. (L-1, B) each."""
        diff = (self.d[1:] - self.d[:-1]).norm(dim=-1)
        noise = (self.rho[1:].square() + self.rho[:-1].square()).sqrt()
        return diff, noise, self.valid[1:] & self.valid[:-1]


def _ladder_offsets(s: Stencil, levels: int) -> tuple[list[float], list[list[int]]]:
    """The distinct offsets gamma_i 2^j of a probe ladder (j = -levels..levels), and for each level the index of
    each stencil point in that list. The offsets are binary fractions, so the union is exact."""
    points = sorted({Fraction(g) * Fraction(2) ** j for j in range(-levels, levels + 1) for g in s.offsets})
    where = {c: k for k, c in enumerate(points)}
    index = [[where[Fraction(g) * Fraction(2) ** j] for g in s.offsets] for j in range(-levels, levels + 1)]
    return [float(c) for c in points], index


def _representable(x: Tensor, u: Tensor, h: Tensor, gamma: float) -> Tensor:
    r"""Whether the perturbation :math:`\gamma h u` survives rounding in x's dtype: the part of it that
    :math:`\mathrm{fl}(x + \gamma h u) - x` loses is under half. x, u: (B, *event), h: (B,) -> (B,) bool. Below,
    the step underflows: the stencil points collapse onto x's grid."""
    shape = (-1, *([1] * (x.dim() - 1)))
    delta = (gamma * h).view(shape) * u.double()  # (B, *event), the exact perturbation
    kept = (x + delta.to(x.dtype)).double() - x.double()  # what the dtype keeps of it
    return (kept - delta).reshape(len(x), -1).norm(dim=1) < 0.5 * delta.reshape(len(x), -1).norm(dim=1)


# What a probe where f is not finite was for, and what to do: (the probes of, the remedy), per step="auto" or not.
_PROBES_OF = {True: ("the automatic step", "Keep f finite there, or pass step=None and choose the step |v| yourself"),
              False: ("the error estimate at the step |v|", "Keep f finite there, or pass a shorter v")}


def _probe(f: Fn, x: Tensor, u: Tensor, h0: Tensor, s: Stencil, who: str, auto: bool = True) -> _Ladder:
    """One stacked forward of f, without a graph, at every offset of the ladder around h0 (x, u: (B, *event),
    h0: (B,)); the D_h and roundoff of each level (eqs. S1, S2). The unit roundoff is the coarser of x's and f's
    dtypes. See NOTE [point-major stacked batch] in fdsm.fd for the layout. ``auto``: the probes are the automatic
    step's (else a fixed step's estimate), for the message where f is not finite at one."""
    offsets, index = _ladder_offsets(s, LADDER)
    T, B, K = s.order, x.shape[0], len(offsets)
    shape = (-1, *([1] * (x.dim() - 1)))
    v0 = (h0.view(shape) * u.double()).to(x.dtype)  # (B, *event): h_0 u, the unit of the ladder's offsets
    with torch.no_grad():
        out = f(fd.stencil_inputs(x, v0, tuple(offsets))).unflatten(0, (K, B))  # (K*B, *k) -> (K, B, *k)
    bad = ~torch.isfinite(out).reshape(K, B, -1).all(-1)  # (K, B)
    if bad.any():
        k, b = (int(i) for i in bad.nonzero()[0])
        what, remedy = _PROBES_OF[auto]
        raise ValueError(f"{who}: f is not finite at a probe of {what}: sample {b} at x + "
                         f"{offsets[k] * float(h0[b]):.3g} v/|v| gives {out[k, b].flatten()[:3].tolist()}; the "
                         f"probes reach up to {max(abs(g) for g in offsets) * float(h0[b]):.3g} from x along v/|v|. "
                         f"{remedy}")
    unit = max(unit_roundoff(x.dtype), unit_roundoff(out.dtype))
    values = out.double().reshape(K, B, -1)  # (K, B, m)
    w = torch.tensor(s.weights, dtype=torch.float64, device=x.device)  # (S,)
    step = torch.stack([h0 * 2.0**j for j in range(-LADDER, LADDER + 1)])  # (L, B)
    f_i = torch.stack([values[idx] for idx in index])  # (L, S, B, m): f at level l's stencil points
    h_T = step.pow(T)  # (L, B)
    d = torch.einsum("s,lsbm->lbm", w, f_i) / h_T.unsqueeze(-1)  # eq. (S1): (L, B, m)
    rho = unit * torch.einsum("s,lsb->lb", w.square(), f_i.square().sum(-1)).sqrt() / h_T  # eq. (S2), kappa = 1
    finest = min(abs(g) for g in s.offsets if g != 0)
    valid = torch.stack([_representable(x, u, h, finest) for h in step])  # (L, B)
    return _Ladder(step, d, rho, valid)


# NOTE [reading the probe ladder]
# Along a ladder h_j = h_0 2^j the pair difference |D_h - D_{h/2}| is roundoff at small steps (it falls like h^-T)
# and truncation at larger ones (it grows like h^p, then faster, slower or erratically once the stencil leaves the
# asymptotic range). Each pair j bounds C:
#     C_j = max(sqrt(diff^2 - noise^2), noise) / ((1 - 2^-p) h_j^p),
# the truncation share of its difference (E|a + n|^2 = a^2 + sigma^2), and at least its roundoff: a measurement
# where the pair "measures" (its difference exceeds DOMINANT times its roundoff), an upper bound where it does not.
# - C comes from the lowest pair of the unbroken run of measuring pairs that reaches the top of the usable ladder:
#   the most asymptotic pair that surely measures truncation. Lower measuring pairs that do not join the run are
#   noise (one noisy level lifts two adjacent pairs; the roundoff pair above breaks the run), and so are the run's
#   lowest pairs while their differences fall towards the next one (roundoff falls with h, truncation grows).
#   Going lower would be wrong the other way: where truncation grows slower than h^p (higher-order terms of the
#   other sign), the larger steps' C_j underestimate it at the optimum, which lies below.
# - The roundoff pair under the run bounds C as well, and the smaller of the two is used. That catches a run that
#   starts past the asymptotic range: on the trained deep EBM at T = 6 in float32 the difference is roundoff up to
#   h = 16 and jumps 7000-fold by h = 32, where h^p predicts 16-fold; the pair at 16 bounds C there.
# - R is read at the larger step of the pair C comes from, so that both describe the same steps. Read at the run's
#   pair while C comes from the pair under it, a run whose larger step reaches a far field (f orders of magnitude
#   larger there, so its roundoff too) would pair that roundoff with the near field's C and push h* into the far
#   field, where D_h settles on the far field's value with a small relative estimate: a silently bad number (the
#   deep EBM in bfloat16 at T = 2 did this; tests/test_fd_estimate.py has a closed form of it).
# - Pairs that differ by more than D itself, while their roundoff is well under D, lie past the asymptotic range:
#   from the first one up no pair is usable (the differences saturate there and C_j would fall again). Not so the
#   ladder's lowest pairs while each difference falls to the next one's faster than h^(-T/2): that is roundoff, which
#   looks like this where it exceeds the u |f| model many times (f cancels: sin near a zero, in float32). Taken for
#   steps past the range, they had marked every pair above them past too, and the ladder walked down into the
#   roundoff (tests/test_fd_estimate.py has two closed forms of it).
# - A ladder whose C only bounds the top pair's roundoff (no pair measures) moves up while the roundoff still falls
#   like h^-T at its top, so that a larger step may have less error. Where it falls slower, f grows with h (a
#   polynomial along the line, for which the stencil is exact) and a larger step only adds roundoff: the ladder stays.
# - Eq. (S2) assumes a rounding error of u|f_i| at each point. A network's arithmetic adds to that (the trained deep
#   EBM: kappa = 1.3-3), so the roundoff is calibrated: kappa = median(diff / noise) / 0.674 over the pure-roundoff
#   pairs (under the run, the run's truncation under a third of the difference), since |N(0, 1)| has median 0.674.
#   It is pooled over the batch and over the probe forwards of one call (1 until there are such pairs); a sample
#   whose own roundoff pairs (two or more) put it above 3x the pooled kappa, where f cancels, keeps its own.
_HALF_NORMAL_MEDIAN = 0.6745


def _bounds(ladder: _Ladder, s: Stencil, kappa: float | Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per pair (P, B): C_j of NOTE [reading the probe ladder] (inf where a level is invalid, and from the first pair
    past the asymptotic range up), the difference, its calibrated roundoff, whether the pair measures truncation,
    and whether it lies past the asymptotic range."""
    p = s.accuracy
    diff, noise, valid = ladder.pairs()
    noise = kappa * noise
    dominant = valid & (diff > DOMINANT * noise)
    size = ladder.d.norm(dim=-1)  # (L, B): |D_h|
    small = torch.minimum(size[1:], size[:-1])
    falls = torch.zeros_like(valid)
    falls[:-1] = diff[1:] * 2.0 ** (s.order / 2) < diff[:-1]  # to the next pair's, as roundoff does (like h^-T)
    bottom = falls.int().cumprod(0).bool()  # the ladder's lowest pairs, while each difference falls so
    past = (valid & (diff > small) & (DOMINANT * noise < small) & ~bottom).int().cumsum(0) > 0
    truncation = (diff.square() - noise.square()).clamp(min=0).sqrt()
    bound = torch.maximum(truncation, noise) / (1 - 2.0**-p) / ladder.step[1:].pow(p)  # pair i: levels i+1, i
    return torch.where(valid & ~past, bound, math.inf), diff, noise, dominant, past


def _run_start(measuring: Tensor, usable: Tensor, diff: Tensor) -> tuple[Tensor, Tensor]:
    """(P, B) -> (B,), (B,): the lowest pair of the unbroken run of measuring pairs that ends at the last usable pair
    (the top, or the one under the first pair past the asymptotic range), moved up past pairs whose difference
    falls towards the next one (roundoff, which falls like h^-T, not truncation); P where that pair does not
    measure. And the last usable pair, -1 where none is."""
    P = measuring.shape[0]
    rows = torch.arange(measuring.shape[1], device=measuring.device)
    last = torch.where(usable.any(0), P - 1 - usable.flip(0).int().argmax(0), -1)  # (B,): the last usable pair
    start = torch.full_like(last, P)
    for i in range(P - 1, -1, -1):  # downwards from the top, extending the run while it measures
        extend = measuring[i] & ((start == i + 1) | (i == last))
        start = torch.where(extend & (i <= last), torch.full_like(start, i), start)
    for _ in range(P - 1):  # upwards while the run starts with a falling difference
        i = start.clamp(max=P - 2)
        falls = (start < last) & (diff[i + 1, rows] < diff[i, rows])
        start = torch.where(falls, start + 1, start)
    return start, last


def _kappa(pool: list[Tensor]) -> float:
    ratios = torch.cat(pool) if pool else torch.zeros(0)
    return max(float(ratios.median()) / _HALF_NORMAL_MEDIAN, 0.1) if len(ratios) else 1.0


@dataclass(frozen=True)
class _Fit:
    """The error model of eq. (S3) per sample, read from one ladder. (B,) each, float64."""

    c: Tensor  # C (inf where no pair is usable)
    r: Tensor  # R = rho(h) h^T with the calibrated kappa
    h_star: Tensor  # the model's optimum step
    measured: Tensor  # C's pair measures truncation (else C is a roundoff bound)
    at_top: Tensor  # C's pair is the top one: a smaller C may lie above the ladder
    too_high: Tensor  # no usable pair, and some past the asymptotic range: the ladder lies above the useful steps
    bottom: Tensor  # the ladder's smallest step
    tau: Tensor  # the truncation measured by the centre pair (h_0, h_0/2), roundoff taken out
    centre_measures: Tensor  # whether that pair measures truncation


def _fit(ladder: _Ladder, s: Stencil, pool: list[Tensor]) -> _Fit:
    """C, R and h* of eq. (S3) from one ladder (NOTE [reading the probe ladder]). ``pool`` holds the roundoff ratios
    diff / noise (kappa = 1) of the pure-roundoff pairs of this call; this ladder's join it."""
    T, p = s.order, s.accuracy
    P, B = ladder.step.shape[0] - 1, ladder.step.shape[1]
    rows = torch.arange(B, device=ladder.step.device)
    pairs = torch.arange(P, device=ladder.step.device).unsqueeze(1)  # (P, 1)

    def read(kappa: float | Tensor) -> tuple[Tensor, ...]:
        bound, diff, noise, measuring, past = _bounds(ladder, s, kappa)
        usable = torch.isfinite(bound)
        start, last = _run_start(measuring & usable, usable, diff)  # (B,) each
        j = torch.where(start < P, start, last.clamp(min=0))  # no run: the last usable pair's roundoff bound
        under = (j - 1).clamp(min=0)  # the roundoff pair under the run bounds C too
        lower = (start < P) & (start > 0) & usable[under, rows] & (bound[under, rows] < bound[j, rows])
        at = torch.where(lower, under, j)  # the pair C is read from: R is read there too
        return bound[at, rows].where(last >= 0, math.inf), j, at, start, diff, noise, measuring, past, usable

    kappa = _kappa(pool)
    c, _, _, start, diff, noise, measuring, _, usable = read(kappa)
    model = torch.nan_to_num(c, posinf=0.0) * ladder.step[1:].pow(p) * (1 - 2.0**-p)  # (P, B): C's share of diff
    roundoff = (pairs < start - 1) & usable & (3 * model < diff)  # (P, B)
    ratios = diff / (noise / kappa)  # against eq. (S2) with kappa = 1
    pool.append(ratios[roundoff])
    kappa = _kappa(pool)
    # A sample whose own roundoff pairs say its roundoff is well above the batch's (f cancels there) keeps its own.
    own = torch.where(roundoff, ratios, math.nan).nanmedian(0).values / _HALF_NORMAL_MEDIAN  # (B,)
    own_kappa = torch.where((roundoff.sum(0) >= 2) & (own > 3 * kappa), own, kappa)
    c, j, at, start, diff, noise, measuring, past, usable = read(own_kappa)
    h = ladder.step[at + 1, rows]  # the larger step of C's pair: its f values set the roundoff beside that C
    r = own_kappa * ladder.rho[at + 1, rows] * h.pow(T)
    centre = P // 2 - 1  # the pair (h_0, h_0/2): levels J and J - 1 of the P = 2J pairs
    tau = (diff[centre].square() - noise[centre].square()).clamp(min=0).sqrt() / (1 - 2.0**-p)
    # Up the ladder while C measures, or while the roundoff still falls like h^-T (NOTE [reading the probe ladder])
    climbs = (start < P) | (ladder.rho[-1] * 2.0 ** (T / 2) < ladder.rho[-2])
    return _Fit(c=c, r=r, h_star=(T * r / (p * c)).pow(1.0 / (T + p)), measured=start < P,
                at_top=(j == P - 1) & ~past.any(0) & climbs, too_high=~usable.any(0) & past.any(0),
                bottom=ladder.step[0], tau=tau, centre_measures=measuring[centre])


def _rms(truncation: Tensor, roundoff: Tensor) -> Tensor:
    """The error estimate: E|t + n|^2 = t^2 + sigma^2 for the truncation t and the roundoff n of rms sigma."""
    return (truncation.square() + roundoff.square()).sqrt()


def first_guess(x: Tensor, order: int, accuracy: int) -> Tensor:
    r"""The centre of the first probe ladder, (B,) float64: :math:`h_0 = \max(1, \lVert x_b\rVert)\,
    u^{1/(T+p)}`. The exponent is the optimum's (eq. S3, R proportional to u); the length is the size of the point,
    as in numdifftools' base step (anchors section 5). It only has to land within a few ladders of the optimum:
    the probes re-centre until a ladder brackets it."""
    size = x.detach().double().reshape(len(x), -1).norm(dim=1).clamp(min=1.0)  # (B,)
    return size * unit_roundoff(x.dtype) ** (1.0 / (order + accuracy))


def _auto_step(f: Fn, x: Tensor, u: Tensor, s: Stencil, who: str) -> tuple[Tensor, Tensor, int, int]:
    """The step h* per sample and its absolute error estimate E(h*) along u (eq. S3), (B,) each, with the probe
    forwards and the probe points per sample spent. A sample whose ladder does not bracket h* gets another one:
    centred on its top where C's pair is the top pair, on h* where h* falls under it, ending at its bottom where
    every pair lies past the asymptotic range. One forward per round, for the samples still open."""
    T, p, B = s.order, s.accuracy, x.shape[0]
    h0 = first_guess(x, T, p)
    step, err = torch.full_like(h0, math.nan), torch.full_like(h0, math.nan)
    active = torch.arange(B, device=x.device)
    forwards, points, pool = 0, 0.0, []
    per_ladder = len(_ladder_offsets(s, LADDER)[0])
    for attempt in range(MAX_PROBES):
        fit = _fit(_probe(f, x[active], u[active], h0[active], s, who), s, pool)
        forwards, points = forwards + 1, points + per_ladder * len(active) / B
        below = fit.measured & (fit.h_star < h0[active] * 2.0**-LADDER)
        done = ~(below | fit.at_top | fit.too_high) | (attempt == MAX_PROBES - 1)
        h = torch.where(torch.isfinite(fit.c), fit.h_star, fit.bottom)  # nothing usable: flagged, E = inf
        step[active[done]] = h[done]
        err[active[done]] = _rms(fit.c * h.pow(p), fit.r / h.pow(T))[done]  # eq. (S3)
        h0[active[below]] = fit.h_star[below]
        h0[active[fit.at_top & ~below]] *= 2.0**LADDER
        h0[active[fit.too_high]] *= 2.0 ** (-2 * LADDER)
        active = active[~done]
        if len(active) == 0:
            break
    return step, err, forwards, int(math.ceil(points))


# NOTE [the truncation at a fixed step]
# At a fixed step h the truncation is read from the pair (h, h/2) where that pair measures it (tau, eq. S2). Where it
# does not, its difference is roundoff, and the roundoff it carries is that of D_{h/2}, 2^T times D_h's own (eq. S2:
# rho ~ h^-T). So the pair cannot see a truncation at h up to about DOMINANT 2^T / (1 - 2^-p) times the roundoff at
# h, which is then larger than that roundoff: a window just above the optimum, widest at high T (2^6 = 64 at T = 6).
# tau of such a pair, sqrt(diff^2 - noise^2), is a draw of the noise around 0, no reading of the truncation, and
# taking it there under-read the error by the factor of that window (the deep EBM at T = 6 in float32, step 13.3:
# 2.9% measured, 0.5% estimated; float64 at T = 6, step 1.78: 12x under). There the truncation is the ladder's
# C h^p instead, the error model E(h) of eq. (S3) that the automatic step uses: C comes from the lowest measuring
# pairs above (or is the bound of the roundoff pair under them, NOTE [reading the probe ladder]), so in the
# asymptotic range it is the c h^p that tau would read without roundoff, and past it an upper bound: where the
# stencil leaves the asymptotic range between h and 2h, the estimate over-reads (a conservative flag), it does not
# under-read: on the deep EBM in float32 at step 13.3, whose 2h = 26.7 lies where its derivatives blow up, 3-10x at
# T = 2, 4, 5, 6. The octave ladder cannot tell those rows from T = 6's there: the truncation at h is known only to
# lie under C h^p. On the roundoff side of the optimum C h^p is well under the roundoff and changes nothing.


def _fixed_step_error(f: Fn, x: Tensor, u: Tensor, h: Tensor, s: Stencil, who: str) -> tuple[Tensor, int]:
    """E(h) along u at the given steps h (B,): the truncation the pair (h, h/2) measures where it does, else the
    ladder's C h^p (NOTE [the truncation at a fixed step]); plus the roundoff R / h^T. One probe forward, centred
    on h; returns E and the probe points per sample."""
    T, p = s.order, s.accuracy
    fit = _fit(_probe(f, x, u, h, s, who, auto=False), s, [])
    truncation = torch.where(fit.centre_measures, fit.tau, fit.c * h.pow(p))
    return _rms(truncation, fit.r / h.pow(T)), len(_ladder_offsets(s, LADDER)[0])


def fd_estimate(f: Fn, x: Tensor, v: Tensor, order: int, *, method: str = "fd-batched",
                stencil: Stencil | None = None, step: str | None = "auto", richardson: bool = False,
                tolerance: float = TOLERANCE, warn: bool = True) -> FDEstimate:
    r"""The T-th directional derivative by FD, with its estimated error and the step used.

    Args:
        f: maps (B, *event) to (B,) or (B, k), each sample independently.
        x: (B, *event), the points.
        v: (B, *event), non-zero directions; the result is the derivative along v whatever the step (eq. S1).
        order: T >= 1.
        method: an FD method of ``directional_derivative`` (``fd-batched``, ``fd-serial``, ...). It runs the final
            evaluation, with the graph; the probes are stacked forwards without one.
        stencil: default ``central_stencil(T, default_accuracy(T, dtype))`` with ``step="auto"`` (NOTE [default
            accuracy of the automatic step]), the paper's ``central_stencil(T)`` with ``step=None``.
        step: ``"auto"``: chosen per sample from probes of f (eq. S3, NOTE [a step per sample]). ``None``: |v|, as
            ``directional_derivative`` uses it, with its error estimated by one probe forward around it.
        richardson: evaluate ``richardson_stencil(stencil)`` (eq. S4, accuracy p -> p + 2) instead.
        tolerance: the estimated relative error above which a sample is flagged, with a warning when ``warn``.

    Returns:
        ``FDEstimate``: ``derivative`` (B,) or (B, k), as ``directional_derivative`` returns it, differentiable in
        f's parameters; ``rel_error`` (B,), the estimated *relative* error :math:`E(h)/\lVert D_h\rVert`,
        truncation plus roundoff at the step used (eq. S3); ``abs_error`` (B,), the same along v; ``step`` (B,);
        ``flagged`` (B,); the stencil evaluated; the probe forwards and points spent.

    Raises:
        ValueError: f not finite at a probe; a step that underflows in x's dtype; v = 0; an exact method; a bad
            argument, as ``directional_derivative`` checks them.

    >>> f = lambda x: torch.sin(x).sum(1)                   # D^4 along e_0: sin(x_0)
    >>> x = torch.linspace(0.2, 1.4, 4, dtype=torch.float64).view(4, 1)
    >>> est = fd_estimate(f, x, torch.ones_like(x), 4)
    >>> err = (est.derivative - torch.sin(x[:, 0])).abs()
    >>> bool((err < 1e-6).all()), bool((err <= 3 * est.abs_error).all()), est.stencil.accuracy
    (True, True, 4)
    """
    return checked_estimate(f, x, v, order, method=method, stencil=stencil, step=step, richardson=richardson,
                            tolerance=tolerance, warn=warn, who=_WHO)


def _unit_directions(v: Tensor, dtype: torch.dtype, who: str) -> tuple[Tensor, Tensor]:
    """(|v|, v/|v|): (B,) float64 and (B, *event) in ``dtype``, detached; v must be finite and non-zero per sample
    (along v = 0 the derivative is 0, with no step to choose)."""
    norm_v = v.detach().double().reshape(len(v), -1).norm(dim=1)  # (B,); x and v may be (B,)
    if not (torch.isfinite(norm_v) & (norm_v > 0)).all():
        b = int((~(torch.isfinite(norm_v) & (norm_v > 0))).nonzero()[0])
        raise ValueError(f"{who}: expected finite, non-zero directions v, got |v| = {float(norm_v[b])} at sample "
                         f"{b}")
    return norm_v, (v.detach().double() / norm_v.view(-1, *([1] * (v.dim() - 1)))).to(dtype)


def _check_finite_points(x: Tensor, who: str) -> None:
    """Probes at a non-finite x would blame f (``_probe``'s message); say what is wrong instead."""
    finite = torch.isfinite(x.detach()).reshape(len(x), -1).all(1)  # (B,)
    if not finite.all():
        b = int((~finite).nonzero()[0])
        raise ValueError(f"{who}: expected finite points x, got a non-finite entry in sample {b}")


def auto_step(f: Fn, x: Tensor, v: Tensor, order: int, *, stencil: Stencil | None = None,
              who: str = "auto_step(f, x, v, order)") -> Tensor:
    """The steps ``fd_estimate(..., step="auto")`` would choose along v/|v|, (B,) float64, detached, from its
    probes alone (no final evaluation): for a caller that evaluates its own stencil at them, as the FD objectives
    do with ``eps="auto"``. ``stencil``: default ``central_stencil(T, default_accuracy(T, dtype))``."""
    from fdsm import derivatives  # here: fdsm.derivatives imports this module

    order = check_order(order, who)
    derivatives._check_inputs(f, x, v, who)
    _check_finite_points(x, who)
    s = derivatives._check_stencil(stencil or central_stencil(order, default_accuracy(order, x.dtype)), order,
                                   "fd-batched", who)
    _, u = _unit_directions(v, x.dtype, who)
    with torch.no_grad():
        h, _, _, _ = _auto_step(derivatives._checked(f, len(x), who), x.detach(), u, s, who)
    finest = min(abs(g) for g in s.offsets if g != 0)
    if not _representable(x.detach(), u, h, finest).all():
        b = int((~_representable(x.detach(), u, h, finest)).nonzero()[0])
        raise ValueError(f"{who}: the step h = {float(h[b]):.3g} of sample {b} underflows in "
                         f"{str(x.dtype).removeprefix('torch.')}; use float64, or centre and scale x")
    return h


def check_fd_options(method: str, step: object, richardson: object, who: str) -> None:
    """The FD-only options: an FD method, ``step`` ``"auto"`` or None, ``richardson`` a bool."""
    if not method.startswith("fd-"):
        given = " and ".join(f"{name}={value!r}" for name, value, unset in
                             (("step", step, None), ("richardson", richardson, False)) if value is not unset)
        raise ValueError(f"{who}: {given or 'an FD error estimate'} needs an FD method, got {method!r}, which is "
                         "exact: it has no step to choose and no FD error to estimate; pass step=None and "
                         "richardson=False")
    if step not in ("auto", None):
        raise ValueError(f"{who}: expected step='auto' or None (|v| is the step), got {step!r}")
    if not isinstance(richardson, bool):
        raise TypeError(f"{who}: expected richardson to be a bool, got {richardson!r}")


def checked_estimate(f: Fn, x: Tensor, v: Tensor, order: int, *, method: str, stencil: Stencil | None,
                     step: str | None, richardson: bool, tolerance: float, warn: bool, who: str) -> FDEstimate:
    """``fd_estimate`` with its checks, whose errors name ``who`` (the public call made)."""
    from fdsm import derivatives  # here: fdsm.derivatives imports this module for step="auto"

    order = check_order(order, who)
    derivatives._check_inputs(f, x, v, who)
    run = derivatives.METHODS.get(method)
    check_fd_options(method, step, richardson, who)
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real):
        raise TypeError(f"{who}: expected tolerance to be a positive number, got {type(tolerance).__name__} "
                        f"{tolerance!r}")
    if not 0 < tolerance < math.inf:
        raise ValueError(f"{who}: expected a positive finite tolerance, got {tolerance!r}")
    if not isinstance(warn, bool):
        raise TypeError(f"{who}: expected warn to be True or False, got {type(warn).__name__} {warn!r}")
    _check_finite_points(x, who)
    if stencil is None:
        stencil = central_stencil(order, default_accuracy(order, x.dtype) if step == "auto" else 2)
    s = derivatives._check_stencil(stencil, order, "fd-batched", who)  # its type and order
    if richardson:
        s = richardson_stencil(s)
    return _estimate(derivatives._checked(f, len(x), who), run, x, v, s, step, tolerance, warn, who)


def _estimate(f: Fn, run: Callable[..., Tensor], x: Tensor, v: Tensor, s: Stencil, step: str | None,
              tolerance: float, warn: bool, who: str) -> FDEstimate:
    T, B = s.order, x.shape[0]
    shape = (-1, *([1] * (x.dim() - 1)))
    norm_v, u = _unit_directions(v, x.dtype, who)
    if step == "auto":
        h, error, forwards, points = _auto_step(f, x, u, s, who)
    else:
        h, forwards = norm_v, 1
        error, points = _fixed_step_error(f, x, u, h, s, who)
    finest = min(abs(g) for g in s.offsets if g != 0)
    fits = _representable(x, u, h, finest)
    if not fits.all():
        b = int((~fits).nonzero()[0])
        top = float(x[b].detach().abs().max())
        spacing = torch.finfo(x.dtype).eps * 2.0 ** math.floor(math.log2(top)) if top > 0 else 0.0
        raise ValueError(f"{who}: the step h = {float(h[b]):.3g} of sample {b} underflows in "
                         f"{str(x.dtype).removeprefix('torch.')}: x + {finest:g} h v/|v| rounds back onto x's grid "
                         f"(|x| up to {top:.3g}, where the spacing is {spacing:.2g}). Use float64, or centre and "
                         "scale x so that its entries are O(1)")
    # v (h/|v|) = h v/|v|, with only the factor h/|v| detached: the result stays differentiable in v, as at step |v|
    v_h = v if step is None else (v.double() * (h / norm_v).view(shape)).to(x.dtype)  # (B, *event)
    d_h = run(f, x, v_h, T, stencil=s)  # sum_i w_i f(x + gamma_i h u) = h^T D_h: (B,) or (B, k)
    acc = torch.promote_types(d_h.dtype, torch.float32)
    scale = (norm_v / h).pow(T).to(acc).view(-1, *([1] * (d_h.dim() - 1)))  # (|v| / h)^T, eq. (S1)
    derivative = d_h if step is None else (d_h.to(acc) * scale).to(d_h.dtype)
    size = d_h.detach().double().reshape(B, -1).norm(dim=1) / h.pow(T)  # |D_h|: (B,)
    rel = error / size
    flagged = ~(rel <= tolerance)  # NaN (D_h = 0) too
    if warn and flagged.any():
        dtype = str(x.dtype).removeprefix("torch.")
        where = "at the best step it finds" if step == "auto" else "at the step |v|"
        warnings.warn(f"{who}: the estimated error of the order-{T} FD derivative in {dtype} (stencil accuracy "
                      f"{s.accuracy}) is above {tolerance:.0%} {where} for {int(flagged.sum())} of {B} samples "
                      f"(median {float(rel.median()):.2g})"
                      + ("; no step reaches it here" if step == "auto" else "; try step='auto'")
                      + ". Use an exact method, method='exact-taylor'"
                      + (", or float64" if x.dtype != torch.float64 else ""), FDAccuracyWarning, stacklevel=3)
    return FDEstimate(derivative=derivative, rel_error=rel, abs_error=error * norm_v.pow(T), step=h,
                      flagged=flagged, stencil=s, probe_forwards=forwards, probe_points=points)
