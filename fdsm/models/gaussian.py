r"""A learnable Gaussian N(mu, P^{-1}): the toy model whose score-matching objectives have closed forms.

The model is parameterized by its mean mu and the Cholesky factor of its precision, P = L L^T, where L is lower
triangular with a positive diagonal exp(log_diag):

.. math::
    \log p(x) = -\tfrac12 (x-\mu)^\top P (x-\mu) - \tfrac d2 \log 2\pi + \textstyle\sum_k \log L_{kk},
    \qquad \nabla_x \log p(x) = -P (x-\mu), \qquad \nabla_x^2 \log p(x) = -P.

Because the Hessian is constant and the score is linear, the objectives of paper section 2.1 have closed forms,
per sample and in expectation over data x ~ N(m, C) (the ``expected_*`` methods). The objectives' tests compare
the estimators against these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fdsm.models.spec import check_event, register_model


@dataclass(frozen=True)
class GaussianConfig:
    dim: int = 20  # event dimension d; the model's input is (B, d)

    def __post_init__(self):
        if self.dim < 1:
            raise ValueError(f"GaussianConfig(dim={self.dim}): expected dim >= 1")

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.dim,)


class Gaussian(nn.Module):
    """N(mu, P^{-1}) with learnable mu and precision Cholesky factor; initialised to N(0, I).

    Interface: ``log_density(x)`` (normalized) and ``score(x)``; ``forward`` is ``log_density``.
    """

    def __init__(self, config: GaussianConfig):
        super().__init__()
        self.config = config
        d = config.dim
        self.mean = nn.Parameter(torch.zeros(d))
        self.log_diag = nn.Parameter(torch.zeros(d))  # log L_kk
        self.lower = nn.Parameter(torch.zeros(d, d))  # only the strictly lower triangle is used

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.config.event_shape

    @classmethod
    def from_moments(cls, mean: torch.Tensor, precision: torch.Tensor) -> Gaussian:
        """The model N(mean, precision^{-1}); ``mean``: (d,), ``precision``: (d, d) symmetric positive definite."""
        d = mean.shape[-1]
        if mean.shape != (d,) or precision.shape != (d, d):
            raise ValueError(
                f"Gaussian.from_moments(mean, precision): expected shapes (d,) and (d, d), "
                f"got {tuple(mean.shape)} and {tuple(precision.shape)}"
            )
        chol = torch.linalg.cholesky(precision)  # raises for a matrix that is not positive definite
        model = cls(GaussianConfig(dim=d)).to(mean.dtype)
        with torch.no_grad():
            model.mean.copy_(mean)
            model.log_diag.copy_(chol.diagonal().log())
            model.lower.copy_(chol.tril(-1))
        return model

    def precision_cholesky(self) -> torch.Tensor:
        """L: (d, d), lower triangular with positive diagonal."""
        return self.lower.tril(-1) + torch.diag(self.log_diag.exp())

    def precision(self) -> torch.Tensor:
        """P = L L^T: (d, d)."""
        chol = self.precision_cholesky()
        return chol @ chol.T

    def _centred(self, x: torch.Tensor) -> torch.Tensor:
        """x - mu, after checking that x is (B, d)."""
        check_event("Gaussian", x, self.event_shape)
        return x - self.mean

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; mu, P^{-1}): (B, d) -> (B,)."""
        centred = self._centred(x)
        chol = self.precision_cholesky()
        whitened = centred @ chol  # (B, d): rows L^T (x - mu), so that ||.||^2 = (x-mu)^T P (x-mu)
        d = self.config.dim
        return -0.5 * whitened.pow(2).sum(1) - 0.5 * d * math.log(2 * math.pi) + self.log_diag.sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_density(x)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """grad_x log p(x) = -P (x - mu): (B, d) -> (B, d)."""
        return -self._centred(x) @ self.precision()  # P is symmetric, so (P c)^T = c^T P

    # ---- closed forms of the objectives (paper section 2.1) -----------------------------------------------------

    def sm_per_sample(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. (1) integrand, tr(grad^2 log p) + 1/2 ||grad log p||^2 = -tr P + 1/2 ||P (x - mu)||^2: (B,)."""
        return -self.precision().trace() + 0.5 * self.score(x).pow(2).sum(1)

    def ssm_integrand(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Eq. (3) integrand before the division by C_v: v^T (-P) v + 1/2 (v^T grad log p)^2; x, v: (B, d) -> (B,)."""
        hessian_term = -((v @ self.precision()) * v).sum(1)
        return hessian_term + 0.5 * (v * self.score(x)).sum(1).pow(2)

    def dsm_per_sample(self, x: torch.Tensor, x_noisy: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Eq. (2) integrand, (1/d) ||grad log p(x~) + (x~ - x)/sigma^2||^2; x, x_noisy: (B, d) -> (B,)."""
        residual = self.score(x_noisy) + (x_noisy - x) / sigma**2
        return residual.pow(2).sum(1) / self.config.dim

    def _second_moment_of_score(self, data_mean: torch.Tensor, data_cov: torch.Tensor) -> torch.Tensor:
        """E ||P (x - mu)||^2 for x ~ N(m, C): ||P (m - mu)||^2 + tr(P C P)."""
        precision = self.precision()
        shift = precision @ (data_mean - self.mean)
        return shift.pow(2).sum() + (precision @ data_cov @ precision).trace()

    def expected_sm(self, data_mean: torch.Tensor, data_cov: torch.Tensor) -> torch.Tensor:
        """J_SM, eq. (1), for data x ~ N(m, C): -tr P + 1/2 (||P (m - mu)||^2 + tr(P C P)). A 0-d tensor."""
        return -self.precision().trace() + 0.5 * self._second_moment_of_score(data_mean, data_cov)

    def expected_ssm(self, data_mean: torch.Tensor, data_cov: torch.Tensor) -> torch.Tensor:
        """J_SSM, eq. (3), for any v with E[v v^T] = (C_v / d) I (e.g. uniform on a sphere): J_SM / d."""
        return self.expected_sm(data_mean, data_cov) / self.config.dim

    def expected_dsm(
        self, data_mean: torch.Tensor, data_cov: torch.Tensor, sigma: float | torch.Tensor
    ) -> torch.Tensor:
        r"""J_DSM, eq. (2), for x ~ N(m, C) and x~ = x + sigma xi:
        (1/d) [ E||P (x - mu)||^2 + tr((I / sigma - sigma P)^2) ].

        Derivation: the residual is -P (x - mu) + (I / sigma - sigma P) xi, and the cross term has mean zero.
        """
        eye = torch.eye(self.config.dim, dtype=data_cov.dtype, device=data_cov.device)
        noise_map = eye / sigma - sigma * self.precision()
        noise_term = (noise_map @ noise_map).trace()
        return (self._second_moment_of_score(data_mean, data_cov) + noise_term) / self.config.dim


register_model(
    "gaussian",
    Gaussian,
    paper=GaussianConfig(dim=20),
    cpu=GaussianConfig(dim=20),
    interface="log_density",
    summary="toy N(mu, P^-1) with closed-form SM, SSM and DSM objectives",
)
