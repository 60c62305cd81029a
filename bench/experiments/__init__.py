"""The registry of experiments: every sweep the suite runs, each declared in one module (``bench.experiment``).

The CLI makes a subcommand of each, ``fdsm-bench all`` runs those ``in_main_job`` in this order, ``report.md``
has a section of each that declares one, ``compare`` joins each CSV on its ``compare_keys``, and
``bench/test_experiments.py`` generates a pytest-benchmark suite from each that declares a ``benchmark``. A new
experiment is one new module here and one line below (docs/extending.md).
"""

from bench.experiments import derivatives, eps_sweep, grad_agreement, kernels, scaling, train_steps

# In the order ``fdsm-bench all`` runs them and ``report.md`` shows them: the eps-sweep finds the FD steps that
# the derivatives sweep then times.
EXPERIMENTS = (
    eps_sweep.EXPERIMENT,
    derivatives.EXPERIMENT,
    train_steps.EXPERIMENT,
    grad_agreement.EXPERIMENT,
    kernels.EXPERIMENT,
    scaling.EXPERIMENT, scaling.STENCIL_EXPERIMENT,  # torchrun launches: not in the main job
)


def experiment(name: str):
    """The experiment called ``name`` (its subcommand name) or whose CSV is ``name``."""
    for e in EXPERIMENTS:
        if name in (e.name, e.csv, e.stem):
            return e
    raise KeyError(f"no experiment {name!r}; expected one of {', '.join(e.name for e in EXPERIMENTS)}")
