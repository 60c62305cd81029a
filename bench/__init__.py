"""fdsm-bench harness: timing, memory, error, sweeps, CSV, plots and the ``fdsm-bench`` CLI."""
