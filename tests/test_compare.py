"""`fdsm-bench compare OLD NEW`: ratios per row, and exit status 1 on a regression past the threshold."""

import pandas as pd
import pytest

from bench.cli import main


def write(folder, times, statuses=None):
    folder.mkdir(exist_ok=True)
    n = len(times)
    pd.DataFrame({
        "model": ["deep-ebm"] * n, "method": [f"m{i}" for i in range(n)], "order": [2] * n, "batch": [8] * n,
        "dtype": ["float32"] * n, "device": ["cpu"] * n, "time_ms": times, "status": statuses or ["ok"] * n,
        "timestamp": [f"2026-11-28T00:00:0{i}" for i in range(n)],  # metadata differs between runs: not a key
    }).to_csv(folder / "derivatives.csv", index=False)
    return folder


@pytest.mark.parametrize(
    "new_times, new_status, threshold, code",
    [
        ([10.0, 2.0], None, 0.1, 0),     # unchanged
        ([10.5, 2.1], None, 0.1, 0),     # +5%: inside the threshold
        ([10.0, 2.5], None, 0.1, 1),     # +25% on one row
        ([10.0, 2.5], None, 0.5, 0),     # ... which a 50% threshold lets through
        ([10.0, None], ["ok", "timeout"], 0.1, 1),  # a row that stopped being ok
    ],
)
def test_compare_exit_status(tmp_path, capsys, new_times, new_status, threshold, code):
    old = write(tmp_path / "old", [10.0, 2.0])
    new = write(tmp_path / "new", new_times, new_status)
    assert main(["compare", str(old), str(new), "--threshold", str(threshold)]) == code
    out = capsys.readouterr().out
    assert "derivatives.csv" in out and "ratio" in out


@pytest.mark.parametrize("new_speedups, code", [([2.0, 1.5], 1), ([2.0, 2.5], 0)])
def test_compare_reads_a_higher_speedup_as_better(tmp_path, new_speedups, code):
    for name, speedups in (("old", [2.0, 2.0]), ("new", new_speedups)):
        (tmp_path / name).mkdir()
        pd.DataFrame({"model": "deep-ebm", "objective": ["FD-SSM", "FD-DSM"], "batch": 64, "dtype": "float32",
                      "device": "cpu", "speedup": speedups, "status": "ok"}).to_csv(
            tmp_path / name / "train_steps.csv", index=False)
    assert main(["compare", str(tmp_path / "old"), str(tmp_path / "new"), "--metric", "speedup"]) == code


def test_compare_rejects_missing_folders(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert "expected a result folder" in capsys.readouterr().err


def test_compare_fails_when_new_lost_rows_or_files_and_refuses_a_metric_it_cannot_find(tmp_path, capsys):
    old = write(tmp_path / "old", [10.0, 2.0])
    assert main(["compare", str(old), str(write(tmp_path / "short", [10.0]))]) == 1  # m1 is gone
    assert "ok -> missing" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(old), str(tmp_path / "empty")]) == 1  # derivatives.csv is gone
    assert "is missing" in capsys.readouterr().out
    assert main(["compare", str(old), str(write(tmp_path / "same", [10.0, 2.0])), "--metric", "time-ms"]) == 2
    assert "nothing was compared" in capsys.readouterr().err
