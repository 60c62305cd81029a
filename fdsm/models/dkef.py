r"""DKEF, the deep kernel exponential family of paper section 6.1 (Wenliang et al.; Song et al.'s released code).

.. math::
    \log \tilde p(x) = \log q_0(x) + \sum_{m=1}^{M} \alpha_m k(x, z_m), \qquad
    \log q_0(x) = -\frac{\lVert x \rVert^2}{2 \sigma_0^2}, \quad \sigma_0 = 2,

    k(x, z) = \sum_{j=1}^{3} \mathrm{softmax}(w)_j
        \exp\!\Big(-\frac{\lVert \phi_j(x) - \phi_j(z) \rVert^2}{2 \cdot 10^{\ell_j}}\Big),

with one feature net per kernel, phi_j(x) = MLP_j(x) + S_j x (D -> 30 -> 30 -> 30 with softplus, plus a linear skip
without bias), M = 200 trainable inducing points z_m, learnable log10-bandwidths ell_j (init 0, 0.5185, 1),
kernel logits w (init 0) and a learnable log10 ridge lambda (init -2). D = 15 (Parkinsons) gives 11,377 parameters.

alpha is not a parameter: it minimizes the score-matching objective of the row being trained on a half-batch X_t,
which is quadratic in alpha. With a_m = v^T grad_x k(x, z_m), h_m = v^T grad_x^2 k(x, z_m) v and
g = v^T grad_x log q_0(x) per sample x (v Rademacher, as released), the sliced objective (paper eq. (3); the
released ``sliced`` mode, which its SSM and FD-SSM rows use) gives

.. math::
    J(\alpha) = \mathbb{E}\big[h^\top\alpha + \tfrac12 (a^\top\alpha + g)^2\big]
        + \tfrac{10^\lambda}{2}\lVert\alpha\rVert^2 + \text{const}
    \ \Rightarrow\ \alpha = -(G + 10^{\lambda} I)^{-1} b, \quad G = \mathbb{E}[a a^\top], \ b = \mathbb{E}[h + a g],

and the variance-reduced one (eq. (11); the released ``sliced_VR`` mode, its SSMVR row) keeps the full gradient in
the square, :math:`\tfrac12 \lVert K\alpha + \nabla_x \log q_0 \rVert^2` with :math:`K = \nabla_x k(x, z)`
(D, M), so that :math:`G = \mathbb{E}[K^\top K]` and :math:`b = \mathbb{E}[h + K^\top \nabla_x \log q_0]`
(``DKEFConfig.alpha_fit``).

The solve is differentiable, so a training step backpropagates through it; the loss is then evaluated on the other
half-batch X_v with that alpha (``model.log_density(x_v, alpha)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fdsm.models.spec import check_event, register_model

ALPHA_FITS = ("sliced", "sliced-vr")


@dataclass(frozen=True)
class DKEFConfig:
    dim: int = 15  # D: 15 for Parkinsons, 11 for the wines (after fdsm.data's cleaning)
    n_inducing: int = 200  # M
    n_kernels: int = 3
    hidden: int = 30  # feature width of every layer of phi_j
    q0_sigma: float = 2.0  # sigma_0 of the fixed base measure N(0, sigma_0^2 I)
    init_log_bandwidths: tuple[float, ...] = (0.0, 0.5185, 1.0)  # ell_j (log10), one per kernel
    init_log_lambda: float = -2.0  # log10 of the ridge in the alpha solve
    alpha_fit: str = "sliced"  # the objective alpha minimizes: "sliced" (SSM, FD-SSM) or "sliced-vr" (SSMVR)

    def __post_init__(self):
        object.__setattr__(self, "init_log_bandwidths", tuple(self.init_log_bandwidths))
        if len(self.init_log_bandwidths) != self.n_kernels:
            raise ValueError(
                f"DKEFConfig(n_kernels={self.n_kernels}, init_log_bandwidths={self.init_log_bandwidths}): expected "
                "one initial log-bandwidth per kernel"
            )
        if self.alpha_fit not in ALPHA_FITS:
            raise ValueError(f"DKEFConfig(alpha_fit={self.alpha_fit!r}): expected one of {ALPHA_FITS}")
        if min(self.dim, self.n_inducing, self.n_kernels, self.hidden) < 1 or self.q0_sigma <= 0:
            raise ValueError(f"{self}: expected positive sizes and q0_sigma > 0")

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.dim,)


class FeatureNet(nn.Module):
    """phi(x) = L3(softplus(L2(softplus(L1 x)))) + S x: (N, D) -> (N, hidden). Weights and biases ~ N(0, 1/out)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.Softplus(), nn.Linear(hidden, hidden), nn.Softplus(), nn.Linear(hidden, hidden)
        )
        self.skip = nn.Linear(dim, hidden, bias=False)
        for p in self.parameters():
            nn.init.normal_(p, std=hidden**-0.5)  # every layer here has `hidden` output features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.skip(x)


class DKEF(nn.Module):
    """Interface: ``solve_alpha(x_t, v=None) -> (M,)``, then ``log_density(x, alpha)`` (unnormalized), (N, D) ->
    (N,). ``fit_alpha(x_t)`` stores a detached alpha that ``log_density(x)`` then uses by default."""

    def __init__(self, config: DKEFConfig):
        super().__init__()
        self.config = config
        self.features = nn.ModuleList(FeatureNet(config.dim, config.hidden) for _ in range(config.n_kernels))
        self.inducing = nn.Parameter(torch.randn(config.n_inducing, config.dim))  # z; see init_inducing
        self.log_bandwidths = nn.Parameter(torch.tensor(config.init_log_bandwidths))  # ell_j
        self.kernel_logits = nn.Parameter(torch.zeros(config.n_kernels))  # w
        self.log_lambda = nn.Parameter(torch.tensor(config.init_log_lambda))  # lambda (log10)
        self.register_buffer("alpha", torch.zeros(config.n_inducing))
        self.alpha_fitted = False

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.config.event_shape

    def init_inducing(self, x: torch.Tensor) -> None:
        """Set z to M distinct rows of the training data x: (N, D), N >= M, as the released code does."""
        check_event("DKEF.init_inducing", x, self.event_shape)
        m = self.config.n_inducing
        if len(x) < m:
            raise ValueError(f"DKEF.init_inducing(x): expected at least n_inducing={m} rows, got {len(x)}")
        with torch.no_grad():
            self.inducing.copy_(x[torch.randperm(len(x), device=x.device)[:m]])

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        """k(x_n, z_m): (N, D) -> (N, M)."""
        weights = self.kernel_logits.softmax(0)
        bandwidths = 10.0**self.log_bandwidths  # 10^ell_j, divides the squared distance (not squared itself)
        total = 0.0
        for j, phi in enumerate(self.features):
            diff = phi(x)[:, None, :] - phi(self.inducing)[None, :, :]  # (N, M, hidden)
            total = total + weights[j] * torch.exp(-diff.pow(2).sum(-1) / (2 * bandwidths[j]))
        return total

    def log_base(self, x: torch.Tensor) -> torch.Tensor:
        """log q_0(x) = -||x||^2 / (2 sigma_0^2): (N, D) -> (N,)."""
        return -x.pow(2).sum(1) / (2 * self.config.q0_sigma**2)

    def solve_alpha(self, x_t: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """alpha = -(G + 10^lambda I)^{-1} b from the batch x_t: (N, D) -> (M,); differentiable.

        ``v``: (N, D) projection directions; default Rademacher, as released.
        """
        check_event("DKEF.solve_alpha", x_t, self.event_shape)
        if v is None:
            v = torch.randint(0, 2, x_t.shape, device=x_t.device).to(x_t.dtype) * 2 - 1
        elif v.shape != x_t.shape:
            raise ValueError(f"DKEF.solve_alpha(x_t, v): expected v of shape {tuple(x_t.shape)}, got {tuple(v.shape)}")

        def directional(x: torch.Tensor) -> torch.Tensor:  # a(x) = v^T grad_x k(x, z): (N, M)
            return torch.func.jvp(self.kernel, (x,), (v,))[1]

        a, h = torch.func.jvp(directional, (x_t,), (v,))  # a, and h = v^T grad^2 k v: (N, M) each
        grad_log_q0 = x_t / -(self.config.q0_sigma**2)  # (N, D)
        n, m = a.shape
        if self.config.alpha_fit == "sliced":
            g = (v * grad_log_q0).sum(1)  # (N,)
            gram = a.T @ a / n  # G: (M, M)
            b = (h + a * g[:, None]).mean(0)  # (M,)
        else:  # "sliced-vr": K = grad_x k(x, z) per sample, one jvp per input coordinate
            basis = torch.eye(x_t.shape[1], dtype=x_t.dtype, device=x_t.device)[:, None, :].expand(-1, n, -1)
            k_grad = torch.func.vmap(lambda e: torch.func.jvp(self.kernel, (x_t,), (e,))[1])(basis)  # (D, N, M)
            gram = torch.einsum("dnm,dnk->mk", k_grad, k_grad) / n  # E[K^T K]: (M, M)
            b = (h + torch.einsum("dnm,nd->nm", k_grad, grad_log_q0)).mean(0)  # (M,)
        ridge = 10.0**self.log_lambda * torch.eye(m, dtype=a.dtype, device=a.device)
        return -torch.linalg.solve(gram + ridge, b)

    def fit_alpha(self, x_t: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """Solve alpha on x_t and store a detached copy for ``log_density(x)`` without alpha; returns it."""
        self.alpha = self.solve_alpha(x_t, v).detach()
        self.alpha_fitted = True
        return self.alpha

    def log_density(self, x: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
        """log p~(x) = log q_0(x) + k(x, z) alpha: (N, D) -> (N,); ``alpha``: (M,), default the fitted one."""
        check_event("DKEF", x, self.event_shape)
        if alpha is None:
            if not self.alpha_fitted:
                raise RuntimeError(
                    "DKEF.log_density(x): alpha is not fitted; pass alpha=model.solve_alpha(x_t) (training), or "
                    "call model.fit_alpha(x_t) once to store one"
                )
            alpha = self.alpha
        return self.log_base(x) + self.kernel(x) @ alpha

    def forward(self, x: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
        return self.log_density(x, alpha)


register_model(
    "dkef",
    DKEF,
    paper=DKEFConfig(dim=15, n_inducing=200),
    cpu=DKEFConfig(dim=15, n_inducing=50),
    interface="log_density",
    summary="deep kernel exponential family (Parkinsons D=15), alpha solved per batch",
)
