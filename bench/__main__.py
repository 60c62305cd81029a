"""``python -m bench`` runs the same CLI as the ``fdsm-bench`` console script."""

from bench.cli import main

raise SystemExit(main())
