r"""The rule table: one Taylor rule per aten op, in the style of jax's ``jet.py`` (``jet_rules``).

A rule has the op's own signature, with a ``Jet`` in place of every argument that depends on x, and returns the
op's result with a ``Jet`` in place of every output that depends on x:

    rule(*args, **kwargs) -> Jet | Tensor | tuple

The pass (``fdsm.taylor.propagate``) calls the rule of a node only when one of its arguments is a Jet;
nodes that do not depend on x (constants, the parameters' own preprocessing) run as they are. An op with a Jet
argument and no rule raises ``fdsm.NotSupported`` (a ``NotImplementedError``) naming the op.
``register_rule(op, rule)`` adds a rule for an op of a user's network; the built-in rules below are registered the
same way, right after their definition, in families (jet's ``deflinear``, ``def_deriv``, ``defzero``), one module
of this package each:

============== ============= ==========================================================================
family         module        rule
============== ============= ==========================================================================
structural     structural    views, permutes, slices, indexing, splits, diagonals, tril/triu, cat, sums,
                             cumulative sums, means act on every coefficient at once: the op with its
                             dims shifted past the leading coefficient axis
batch-stacked  structural    convolution, average pooling, upsampling (nearest, (bi/tri)linear, bicubic,
                             antialiased), padding, im2col / col2im (Unfold, Fold), pixel and channel
                             shuffles, max unpooling: the K+1 coefficients stacked along the batch
                             axis, one call of batch (K+1)·B; a bias enters the primal (k = 0) only
affine         affine        add, sub, neg, matmul with one constant factor: coefficientwise; a constant
                             term enters the primal only
bilinear       affine,       mul, a matmul of two Jets, div, pow, atan2, hypot: the Cauchy (Leibniz)
               binary,       product; prod and cumprod as trees of it; logcumsumexp as the log of a
               products      weighted running sum
elementwise    elementwise   exp, exp2, log, tanh, sigmoid, softplus, SiLU, GELU, sin, cos, tan, sinh,
                             cosh, atan, asin, acos, asinh, acosh, atanh, sinc, erf, erfinv, ndtri, lgamma,
                             digamma, polygamma, ...: their derivative coefficients at z_0, composed by
                             Horner's rule (``fdsm.taylor.compose``)
piecewise      piecewise,    ReLU, ELU, where, clamp, maximum / minimum, fmax / fmin, copysign, fmod /
               binary        remainder: the series of the active branch, chosen on the primal
picking        picking       max / min over a dim or all dims, sort, topk, median, kthvalue, mode,
                             cummax / cummin, adaptive max pooling: the series at the indices the primal
                             picks
writes         writes        copy, fill, slice_scatter, select_scatter, index_put (functionalize's form
                             of in-place and masked writes), scatter, index_add, scatter_add,
                             scatter_reduce's sum and mean, and the negative log-likelihood of
                             cross-entropy: linear for fixed indices, the op on the series
zero           piecewise     comparisons, sign, floor, ``*_like``: the op on the primals, a constant
linear algebra linalg        inverse, solves, Cholesky, LU, eigh, svdvals, determinants, QR, lstsq,
                             pinv: the recurrence of each op's defining identity; matrix_exp: a block
                             Toeplitz exponential
complex        complex_      the FFTs, view_as_real / view_as_complex, complex, conj, angle: the op on
               values        the series (linear over the reals); a complex value reaches only the rules
                             declared right for it there, and is refused by every other
============== ============= ==========================================================================

Composites without a rule (mish, hardswish, hardsigmoid, PReLU, log-sigmoid, GLU, logaddexp, addcmul, lerp,
baddbmm, masked_fill, vector norms and distances, max pooling, grid sampling, the regression losses, scaled
dot-product attention on the CPU, ...) reach the rules above through torch's own decompositions
(``fdsm.taylor.trace.TORCH_DECOMPOSED``), and cdist, pdist, nn.Bilinear and RReLU in eval mode through ours
(``fdsm.taylor.trace.DECOMPOSITIONS``). Ops with neither (erfcx, i0, log_ndtr, singular vectors, eig,
embedding_bag of an x-dependent table, the nonlinear scatter reductions, RReLU in training, attention's CUDA
kernels, ...) raise ``NotSupported`` naming the op.

Every rule is written in torch ops, so its result is differentiable in the parameters of f. The table itself and
its lookup are ``table``; what the rules share (a rule's arguments as series, a constant on the primal) is
``operands``.
"""

from fdsm.taylor.rules import (  # noqa: F401  (each module registers its family's rules)
    affine,
    binary,
    complex_values,
    elementwise,
    linalg,
    picking,
    piecewise,
    products,
    structural,
    writes,
)
from fdsm.taylor.rules.elementwise import Elementwise
from fdsm.taylor.rules.operands import add_to_primal
from fdsm.taylor.rules.table import RULES, Rule, register_rule, rule_for, rule_key, takes_complex

__all__ = ["RULES", "Elementwise", "Rule", "add_to_primal", "register_rule", "rule_for", "rule_key", "takes_complex"]
