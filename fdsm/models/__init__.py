"""The models of paper section 6, one module per family, built by name from a registry.

    model = build("deep-ebm", size="cpu")            # an nn.Module
    model = build("nice", size="paper", hidden=500)  # a config field overridden
    MODELS.names()                                   # every registered name

Registered names and what each offers the objectives (see ``fdsm.models.spec`` for the interfaces):

============== =================================================== ==============================
name           model                                               interface
============== =================================================== ==============================
gaussian       toy N(mu, P^-1), closed-form objectives             log_density(x), score(x)
mlp-ebm        toy MLP energy                                      log_density(x) = -energy(x)
deep-ebm       Res18_Quadratic energy, sec. 6.1                    log_density(x) = -energy(x)
dkef           deep kernel exponential family, sec. 6.1            solve_alpha(x_t); log_density(x, alpha)
nice           NICE flow, sec. 6.2                                 log_density(x), exact
ncsn           NCSN CondRefineNetDilated, sec. 6.4                 score(x, sigma); forward(x, labels)
vae-encoder    VAE implicit encoder, sec. 6.3                      forward(x, eps=None) -> z (sampler)
vae-decoder    VAE decoder, sec. 6.3                               forward(z) -> logits / mean (sampler)
vae-score      VAE score net, grad_z log q(z|x)                    score(z, x)
wae-score      WAE score net, grad_z log q(z)                      score(z)
wae-encoder    WAE deterministic encoder, sec. 6.3                 forward(x) -> z (sampler)
wae-decoder    WAE decoder, sec. 6.3                               forward(z) -> pixel means (sampler)
============== =================================================== ==============================

Adding a model: write a module with a frozen config dataclass (with an ``event_shape`` property), an
``nn.Module`` built from it, and one ``register_model(name, cls, paper=..., cpu=..., interface=..., summary=...)``
call; import the module below. The VAE/WAE nets take ``dataset="celeba"`` for the conv versions.
"""

from fdsm.models import deep_ebm, dkef, gaussian, mlp_ebm, ncsn, nice, vae  # noqa: F401  (importing registers the families)
from fdsm.models.casting import COMPLEX_OF, to_dtype
from fdsm.models.spec import MODELS, SIZES, ModelSpec, build, model_config, parameter_count, register_model
from fdsm.models.user import INTERFACES, UserModel, UserModelError, check_user_model

__all__ = ["MODELS", "SIZES", "ModelSpec", "build", "model_config", "parameter_count", "register_model"]
__all__ += ["COMPLEX_OF", "to_dtype"]
__all__ += ["INTERFACES", "UserModel", "UserModelError", "check_user_model"]
