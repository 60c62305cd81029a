r"""Taylor mode (jets): every directional derivative D^0..D^T of f along v from one forward pass.

.. math::
    f(x + t v) = \sum_{k=0}^{T} \frac{D^k_v f(x)}{k!}\, t^k + O(t^{T+1})

Nested autograd differentiates the graph of the level below, T times over, so its cost grows exponentially in T.
Taylor mode instead pushes the T+1 Taylor coefficients of x(t) = x + t v through f once (Bettencourt, Johnson and
Duvenaud 2019; ``jax.experimental.jet``):

- a linear op (convolution, matmul, pooling, reshapes, sums) acts on every coefficient: here, on the T+1
  coefficients stacked along the batch axis, one call of batch (T+1)·B, the stacking that makes ``fd-batched``
  fast;
- a nonlinearity combines them by a recurrence: O(T^2) multiply-adds per element, elementwise only.

Pieces, each in its own module:

============== ===============================================================================================
``trace``      f to an aten graph once (``make_fx``), the tensors it closes over lifted to inputs, cached
``rules``      the rule table, one rule per aten op, a module per family (``rules.linalg``: inverse, solves,
               Cholesky, LU, eigh, svdvals, determinants, QR, lstsq, pinv, matrix_exp); ``register_rule``
               adds one for a user's op
``series``     the recurrences on stacked coefficients (Cauchy product, exp, log, power, tanh, sigmoid, ...)
``propagate``  the pass itself: ``taylor_coefficients(f, x, v, order)`` and the method ``exact_taylor``
``compose``    the elementwise rules' composition :math:`\sum_m c_m \delta(t)^m` by Horner's rule
``fused``      ``fused_rules()``: each elementwise rule's composition as one compiled kernel
============== ===============================================================================================

>>> import torch
>>> x = torch.tensor([[0.3, -0.2]], dtype=torch.float64); v = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
>>> d = taylor_coefficients(lambda x: torch.tanh(x).sum(1), x, v, 3)   # (4, 1): D^0 .. D^3
>>> d.shape
torch.Size([4, 1])
"""

from fdsm.taylor.fused import fused_rules
from fdsm.taylor.jet import Jet
from fdsm.taylor.propagate import exact_taylor, taylor_coefficients
from fdsm.taylor.rules import RULES, register_rule
from fdsm.taylor.trace import STATS, CoupledSamplesWarning, clear_cache

__all__ = ["RULES", "STATS", "CoupledSamplesWarning", "Jet", "clear_cache", "exact_taylor", "fused_rules",
           "register_rule", "taylor_coefficients"]
