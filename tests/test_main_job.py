"""`fdsm-bench all --quick`: every stage runs, the derivative sweeps measure the fitted checkpoint, and report.md
has every figure and the headline tables (the CI-size version of the README's first command)."""

import dataclasses

import pandas as pd
import torch

from bench.cli import main
from bench.commands.fit import checkpoint_path
from bench.config import Shared
from bench.main_job import FIGURE2_RECIPE, STAGES, stage_settings, stage_shared
from bench.results import weights_label


def test_main_job_quick_writes_every_csv_figure_and_the_report(tmp_path, capsys):
    assert main(["all", "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for i, stage in enumerate(STAGES, 1):
        assert f"[{i}/{len(STAGES)}] {stage}" in out  # the progress display names each stage and what remains
    for name in ("derivatives.csv", "eps_sweep.csv", "train_steps.csv", "grad_agreement.csv",
                 "figure2.png", "eps_sweep.png", "train_steps.png", "grad_agreement.png", "report.md"):
        assert (tmp_path / name).stat().st_size > 0, name

    checkpoint = checkpoint_path(tmp_path, FIGURE2_RECIPE)
    assert checkpoint.is_file() and checkpoint.with_suffix(".json").is_file()
    derivatives = pd.read_csv(tmp_path / "derivatives.csv")
    assert set(derivatives["weights"]) == {weights_label(checkpoint)}  # Figure 2 measured the trained model
    assert set(derivatives["checkpoint"]) == {str(checkpoint)}
    assert set(derivatives["status"]) <= {"ok", "unsupported"}

    report = (tmp_path / "report.md").read_text()
    for heading in ("## Figure 2", "## Step size", "## Training steps", "## Gradient agreement",
                    "## Rows that did not run", "## Environment"):
        assert heading in report, heading
    for figure in ("figure2.png", "eps_sweep.png", "train_steps.png", "grad_agreement.png"):
        assert f"]({figure})" in report, figure
    assert "time exact-reverse / fd-batched" in report and "speed-up (median)" in report


def test_main_job_resumes_without_measuring_again(tmp_path, capsys):
    skip = "eps-sweep,train-steps,grad-agreement"
    argv = ["all", "--quick", "--device", "cpu", "--out", str(tmp_path), "--skip", skip]
    assert main(argv) == 0
    first = pd.read_csv(tmp_path / "derivatives.csv")
    assert main(argv) == 0
    assert "exists with these settings, kept" in capsys.readouterr().out  # so the rows stay valid
    second = pd.read_csv(tmp_path / "derivatives.csv")
    pd.testing.assert_frame_equal(first, second)  # nothing measured twice, nothing lost


def test_a_half_dtype_trains_fit_in_float32_and_finds_no_steps_in_a_sweep_without_it(tmp_path, capsys):
    """eps-sweep sweeps its own --dtypes, so the job's --dtype may have no row there: derivatives then keeps its
    default steps (as without a sweep), not a refusal; and fit, which trains in float32 or float64, trains float32."""
    pd.DataFrame({"status": ["ok"], "dtype": ["float32"], "method": ["fd-batched"]}).to_csv(tmp_path / "eps_sweep.csv",
                                                                                           index=False)
    shared = Shared(device="cpu", dtype="bfloat16", out=tmp_path)
    assert "steps_from" not in stage_settings("derivatives", shared)
    assert stage_settings("derivatives", dataclasses.replace(shared, dtype=torch.float32))["steps_from"].is_file()
    assert stage_shared("fit", shared).dtype == torch.float32 and stage_shared("eps-sweep", shared) is shared
    assert main(["all", "--quick", "--device", "cpu", "--dtype", "bfloat16", "--dry-run", "--skip", "eps-sweep",
                 "--out", str(tmp_path / "job")]) == 0
    assert "in float32, into" in capsys.readouterr().out
