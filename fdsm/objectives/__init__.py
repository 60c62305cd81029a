r"""Score-matching objectives, exact and by finite differences (paper sections 2 and 4), one registry.

Each objective takes a callable and a batch x: (B, *event) and returns the batch mean, a 0-d tensor ready for
``.backward()``, or with ``reduction="none"`` the (B,) per-sample values. ``log_density`` maps (B, *event) to (B,)
(possibly unnormalized); ``score`` maps (B, *event) to (B, *event). The NICE baselines of table 3
(``approx_bp_loss``, ``cp_loss``) take the NICE model itself, since they walk its layers. The default direction v
is uniform on the sphere of radius eps (the paper's p_eps(v)); ``v=`` overrides it. See NOTE [one scaling
convention] in ``fdsm.objectives.sliced`` for the scaling (every sliced objective estimates J_SM / d), and the
table there.

>>> import torch
>>> log_density = lambda x: -0.5 * (x ** 2).sum(1)            # N(0, I): J_SM = -d + E||x||^2 / 2
>>> x = torch.randn(8, 3, dtype=torch.float64); v = 0.1 * torch.nn.functional.normalize(torch.randn(8, 3), dim=1)
>>> torch.allclose(fd_ssm_loss(log_density, x, v=v.double(), backend="torch"),   # FD is exact for a quadratic
...                ssm_loss(log_density, x, v=v.double()))
True

Adding an objective: write it with the same signature family in the module of its kind (``sliced``,
``noise_conditional``, ``likelihood``, ``hessian_diagonal``), building it from the shared parts there (the
integrand of its exact / FD pair, ``fdsm.fd.stencil_outputs``, ``checks``), and register it below under a
hyphenated name.
"""

from fdsm.objectives.checks import NOISES, draw_directions
from fdsm.objectives.hessian_diagonal import approx_bp_loss, cp_loss
from fdsm.objectives.likelihood import mle_loss
from fdsm.objectives.noise_conditional import (
    annealed_dsm_loss,
    annealed_fd_ssmvr_loss,
    annealed_ssmvr_loss,
    deep_ebm_sigmas,
    draw_levels,
    multiscale_dsm_loss,
    multiscale_fd_dsm_loss,
    ncsn_sigmas,
)
from fdsm.objectives.sliced import (
    BACKENDS,
    dsm_loss,
    dsm_score_loss,
    fd_dsm_loss,
    fd_ssm_loss,
    fd_ssmvr_loss,
    sliced_dsm_loss,
    sm_loss,
    ssm_loss,
    ssmvr_loss,
    ssmvr_score_loss,
)
from fdsm.registry import Registry

OBJECTIVES: Registry = Registry("objective")
for _fn in (sm_loss, ssm_loss, ssmvr_loss, dsm_loss, sliced_dsm_loss, fd_ssm_loss, fd_dsm_loss, ssmvr_score_loss,
            fd_ssmvr_loss, dsm_score_loss, annealed_dsm_loss, annealed_ssmvr_loss, annealed_fd_ssmvr_loss,
            multiscale_dsm_loss, multiscale_fd_dsm_loss, mle_loss, approx_bp_loss, cp_loss):
    OBJECTIVES.register(_fn.__name__.removesuffix("_loss").replace("_", "-"), _fn)

__all__ = [
    "BACKENDS", "NOISES", "OBJECTIVES", "annealed_dsm_loss", "annealed_fd_ssmvr_loss", "annealed_ssmvr_loss",
    "approx_bp_loss", "cp_loss", "deep_ebm_sigmas", "draw_directions", "draw_levels", "dsm_loss", "dsm_score_loss",
    "fd_dsm_loss", "fd_ssm_loss", "fd_ssmvr_loss", "mle_loss", "multiscale_dsm_loss", "multiscale_fd_dsm_loss",
    "ncsn_sigmas", "sliced_dsm_loss", "sm_loss", "ssm_loss", "ssmvr_loss", "ssmvr_score_loss",
]
