"""``fdsm-bench kernels``: honest ``unsupported`` rows on the CPU, and the CUDA measurement path with a stand-in timer.

The real timer (``triton.testing.do_bench``) needs CUDA; the second test replaces it, and the device check, so that
everything else the GPU run does (inputs, accuracy against the reference, the fwd+bwd closure, bytes moved, GB/s,
the summary and the targets) runs here on tiny sizes, with the Triton kernels under the interpreter.
"""

import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.experiments import kernels as command
from kernels.backend import triton_unavailable_reason


def test_cpu_run_writes_unsupported_rows_without_numbers(tmp_path):
    assert main(["kernels", "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    rows = pd.read_csv(tmp_path / "kernels.csv")
    expected = len(command.QUICK.sizes_mb) * (1 + len(command.BENCHES) * len(command.IMPLS) * len(command.PASSES))
    assert len(rows) == expected
    assert set(rows.status) == {"unsupported"} and rows.message.str.contains("needs CUDA").all()
    assert rows[["time_ms", "gb_per_s", "copy_gb_per_s", "frac_of_copy"]].isna().all().all()
    assert {"device_name", "torch", "triton", "git_commit", "timestamp"} <= set(rows.columns)


@pytest.mark.skipif(triton_unavailable_reason(torch.device("cpu")) is not None,
                    reason="needs the Triton interpreter (TRITON_INTERPRET=1)")
def test_measurement_path_with_a_stand_in_timer(tmp_path, monkeypatch):
    def fake_do_bench(fn, budget, grad_to_none):
        fn()  # the timed closure runs, backward included
        return [2.0, 1.5, 2.5]

    monkeypatch.setattr(command, "unsupported_reason", lambda device: None)
    monkeypatch.setattr(command, "_do_bench", fake_do_bench)
    command._copy_timing.cache_clear()
    try:
        assert main(["kernels", "--device", "cpu", "--dtype", "float64", "--sizes-mb", "0.01",
                     "--kernels", "perturb,fd_ssmvr", "--out", str(tmp_path)]) == 0
    finally:
        command._copy_timing.cache_clear()
    rows = pd.read_csv(tmp_path / "kernels.csv")
    assert len(rows) == 1 + 2 * 2 * 2 and set(rows.status) == {"ok"}, rows[["kernel", "status", "message"]]
    assert (rows.rel_error < 1e-12).all()
    # 2 ms per call: GB/s is bytes moved / 2 ms, and the copy moves 2 x size in the same time.
    assert (rows.gb_per_s == rows.bytes_moved / 2e6).all()
    assert (rows.copy_gb_per_s == 2 * int(0.01 * 2**20) / 2e6).all()
    perturb = rows[rows.kernel == "perturb"].set_index("pass")
    n = int(0.01 * 2**20) // (2 * command.N_EVENT * 8) or 1  # rows of x at 0.01 MiB of float64
    assert perturb.loc["fwd+bwd", "bytes_moved"].max() == 2 * 5 * n * command.N_EVENT * 8  # (2+S)N + (S+2)N, S=3
    table = command.bandwidth(rows)
    assert set(table.kernel) == {"perturb", "fd_ssmvr"} and (table.speedup == 1.0).all()
    assert command.targets(table) == ["targets: no size >= 64 MiB measured"]


def test_targets_read_the_worst_large_size():
    table = pd.DataFrame({"kernel": ["fd_ssmvr"] * 3, "pass": ["fwd+bwd"] * 3, "size_mb": [4, 64, 256],
                          "triton_frac_of_copy": [0.1, 0.8, 0.75], "speedup": [1.0, 2.5, 1.9]})
    assert command.targets(table) == ["fd_ssmvr fwd+bwd: 75% of copy at >= 64 MiB (target 70%): met",
                                      "fd_ssmvr fwd+bwd: 1.90x torch at >= 64 MiB (target 2x): NOT met"]
