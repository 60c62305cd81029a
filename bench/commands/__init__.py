"""The tools of ``fdsm-bench`` that are not sweeps: one module per subcommand, each declaring ``COMMAND``
(``bench.experiment.Command``: name, help, config dataclass, ``run(config, shared) -> int``). No command imports
another. The sweeps are in ``bench.experiments``; the main job is ``bench.main_job``.
"""

from bench.commands import compare, fit, flops, models, train

COMMANDS = (compare.COMMAND, fit.COMMAND, models.COMMAND, flops.COMMAND, train.COMMAND)
