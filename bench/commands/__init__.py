"""One module per ``fdsm-bench`` subcommand.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; ``bench.cli`` lists them
in ``COMMANDS``. The shared options (``--device``, ``--dtype``, ``--out``, ``--quick``, ``--seed``, ``--repeats``)
are added by ``bench.cli`` and arrive already resolved: ``args.device`` is a ``torch.device`` and ``args.dtype`` a
``torch.dtype``.
"""
