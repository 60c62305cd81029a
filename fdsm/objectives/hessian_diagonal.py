r"""Score matching with a cheap Hessian diagonal: the approximate-backprop and curvature-propagation rows of table 3.

Exact score matching, eq. (1), needs :math:`\mathrm{tr}\,\nabla_x^2 \log p`, i.e. d backward passes. Before sliced
score matching, two baselines estimated the diagonal :math:`h_i \approx \partial^2 \log p / \partial x_i^2` from one
pass; the paper compares them with FD-SSM on NICE (table 3). Both objectives here take a NICE model and return, per
sample,

.. math::
    \Big[\textstyle\sum_i h_i + \tfrac12 \lVert \nabla_x \log p \rVert^2\Big] / d ,

the eq. (1) integrand divided by d, so that they are on the scale of every sliced objective (NOTE [one scaling
convention] in ``fdsm.objectives.sliced``: expectation :math:`J_{SM}/d`). The score itself is exact in both.

Both rest on the same decomposition. NICE's log-density, :math:`-\tfrac12\lVert y \rVert^2 + \sum s` with y a
chain of permutations, linear layers, additive couplings, a diagonal scale and elementwise softplus, has curvature
only at y and at the softplus nodes :math:`a = \mathrm{softplus}(z)`; with :math:`J_n = \partial n / \partial x`,

.. math::
    \nabla_x^2 \log p = \textstyle\sum_n J_n^\top M_n J_n, \qquad M_y = -I, \qquad
    M_z = \mathrm{diag}\big(\mathrm{softplus}''(z) \odot \partial \log p / \partial a\big).

- ``approx_bp_loss`` (Kingma & LeCun 2010; Becker & LeCun 1988): carries the gradient g and a diagonal D of the
  Hessian backwards, layer by layer, dropping every off-diagonal term: through a linear layer ``W``,
  :math:`D \leftarrow (W \odot W)^\top D`; through a softplus, :math:`D \leftarrow \sigma(z)^2 D + \sigma(z)(1 -
  \sigma(z))\, g` (softplus' = sigmoid); an additive coupling adds the shift network's (g, D) to its input half's.
  Deterministic and biased; exact for a single coupling whose halves and layers are one unit wide, where no
  off-diagonal term ever arises.
- ``cp_loss`` (curvature propagation, Martens, Sutskever & Swersky 2012): with :math:`M_n = F_n \tilde F_n^\top`,
  :math:`F_n = |M_n|^{1/2}`, :math:`\tilde F_n = \mathrm{sign}(M_n)|M_n|^{1/2}` and independent Rademacher
  :math:`u_n`, the two vector-Jacobian products :math:`w = \sum_n J_n^\top F_n u_n` and
  :math:`\tilde w = \sum_n J_n^\top \tilde F_n u_n` give :math:`\mathbb E[w \odot \tilde w] =
  \mathrm{diag}\,\nabla_x^2 \log p`: unbiased, at the price of two more backward passes. Any factorization
  :math:`M = F \tilde F^\top` is unbiased; the square roots are the CP paper's. With them, one draw's parameter
  gradient grows like :math:`|m|^{-1/2}` as a negative curvature entry m nears 0; its expectation is unaffected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from fdsm.models.nice import NICE
from fdsm.objectives.checks import check_batch, check_reduction, event_dim, reduce


def _check_nice(who: str, model: object) -> NICE:
    if not isinstance(model, NICE):
        raise TypeError(f"{who}: expected a NICE model (fdsm.models.build('nice')), got {type(model).__name__}; "
                        "these baselines walk NICE's layers, other models use ssm_loss or fd_ssm_loss")
    return model


@contextlib.contextmanager
def _softplus_nodes(model: NICE) -> Iterator[list[list[tuple[Tensor, Tensor]]]]:
    """While open, each forward of ``model`` records the (input z, output a) of every softplus, per coupling in
    forward order: ``nodes[k][l]`` is the l-th softplus of coupling k."""
    nodes: list[list[tuple[Tensor, Tensor]]] = [[] for _ in model.couplings]
    handles = [layer.register_forward_hook(lambda _m, inputs, out, k=k: nodes[k].append((inputs[0], out)))
               for k, mlp in enumerate(model.couplings) for layer in mlp if isinstance(layer, nn.Softplus)]
    try:
        yield nodes
    finally:
        for handle in handles:
            handle.remove()


def _mlp_backward(mlp: nn.Sequential, nodes: list[tuple[Tensor, Tensor]], g: Tensor, diag: Tensor
                  ) -> tuple[Tensor, Tensor]:
    """(gradient, approximate Hessian diagonal) at a shift network's output -> at its input, (B, d/2) each."""
    softplus_inputs = iter(reversed([z for z, _ in nodes]))
    for layer in reversed(mlp):
        if isinstance(layer, nn.Linear):
            g, diag = g @ layer.weight, diag @ layer.weight.pow(2)
        else:
            z = next(softplus_inputs)
            s = torch.sigmoid(z)  # softplus'(z); softplus''(z) = s (1 - s) = sigmoid(z) sigmoid(-z)
            g, diag = s * g, s.pow(2) * diag + s * torch.sigmoid(-z) * g
    return g, diag


def approx_bp_loss(model: NICE, x: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Score matching with the approximate-backprop Hessian diagonal (Kingma & LeCun 2010), table 3's "Approx
    BP": :math:`[\sum_i D_i + \tfrac12\lVert g \rVert^2] / d` (module docstring); x: (B, d) -> (B,) or mean."""
    who = "approx_bp_loss(model, x)"
    check_reduction(who, reduction)
    model = _check_nice(who, model)
    x = check_batch(who, x)
    with _softplus_nodes(model) as nodes:
        y, _ = model.transform(x)
    scale = model.log_scale.exp()
    g, diag = -y * scale, -scale.pow(2).expand_as(y)  # at the couplings' output: log p = -||y||^2/2, y = h e^s
    (g1, g2), (d1, d2) = g.chunk(2, dim=1), diag.chunk(2, dim=1)
    for k in reversed(range(len(model.couplings))):
        if k % 2 == 0:  # x_2 <- x_2 + m_k(x_1)
            gm, dm = _mlp_backward(model.couplings[k], nodes[k], g2, d2)
            g1, d1 = g1 + gm, d1 + dm
        else:  # x_1 <- x_1 + m_k(x_2)
            gm, dm = _mlp_backward(model.couplings[k], nodes[k], g1, d1)
            g2, d2 = g2 + gm, d2 + dm
    # The permutation only reorders coordinates: the sums below do not depend on the order.
    per_sample = (d1.sum(1) + d2.sum(1) + 0.5 * (g1.pow(2).sum(1) + g2.pow(2).sum(1))) / event_dim(x)
    return reduce(who, per_sample, reduction)


def _rademacher(like: Tensor) -> Tensor:
    return torch.randint(0, 2, like.shape, device=like.device).to(like.dtype) * 2 - 1


def cp_loss(model: NICE, x: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Score matching with the curvature-propagation Hessian diagonal (Martens et al. 2012), table 3's "CP":
    :math:`[\sum_i w_i \tilde w_i + \tfrac12\lVert \nabla_x \log p \rVert^2] / d`, an unbiased estimate of the eq.
    (1) integrand over d (module docstring); x: (B, d) -> (B,) or mean."""
    who = "cp_loss(model, x)"
    check_reduction(who, reduction)
    model = _check_nice(who, model)
    x = check_batch(who, x).detach().requires_grad_(True)
    with _softplus_nodes(model) as nodes:
        y, log_det = model.transform(x)
    zs, activations = zip(*[node for coupling in nodes for node in coupling], strict=True)
    score, *g_activations = torch.autograd.grad(model.log_density_of(y, log_det).sum(), [x, *activations],
                                                create_graph=True)
    u = _rademacher(y)
    curvature_nodes, f, f_tilde = [y], [u], [-u]  # M_y = -I: F = I, F~ = -I
    for z, g_a in zip(zs, g_activations, strict=True):
        m = torch.sigmoid(z) * torch.sigmoid(-z) * g_a  # the diagonal of M_z: softplus''(z) dlog p/da
        # clamp: sqrt'(0) is infinite; |m| below the smallest normal number counts as that number (a root of about
        # 1e-19 in float32), with a zero gradient, and sign(0) = 0 zeroes its F~ entry
        root = m.abs().clamp_min(torch.finfo(m.dtype).tiny).sqrt() * _rademacher(z)
        curvature_nodes.append(z)
        f.append(root)
        f_tilde.append(torch.sign(m) * root)
    w = torch.autograd.grad(curvature_nodes, x, grad_outputs=f, create_graph=True)[0]
    w_tilde = torch.autograd.grad(curvature_nodes, x, grad_outputs=f_tilde, create_graph=True)[0]
    per_sample = ((w * w_tilde).sum(1) + 0.5 * score.pow(2).sum(1)) / event_dim(x)
    return reduce(who, per_sample, reduction)
