"""Smoke tests of ``fdsm-bench derivatives`` and ``eps-sweep`` (their ``--quick`` presets on the CPU), the
pytest-benchmark path into the same CSV writer, and the CLI's answer to a GPU asked for on a machine without one.

They check the CSV contract of DESIGN.md (required columns, metadata, status) and that a PNG is written, not
timings. Together they take well under a minute on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.config import UsageError
from bench.csvlog import CsvLog, rows_from_pytest_benchmark
from bench.derivative_case import CASE_KEYS
from bench.environment import METADATA_COLUMNS
from bench.experiments import derivatives, eps_sweep
from bench.results import weights_label

REPO = Path(__file__).resolve().parents[1]


def _run(command: str, out: Path, *extra: str) -> pd.DataFrame:
    assert main([command, "--quick", "--device", "cpu", "--out", str(out), "--threads", "1", *extra]) == 0
    return pd.read_csv(out / f"{command.replace('-', '_')}.csv")


def test_derivatives_quick_writes_the_csv_and_figure2_and_resumes(tmp_path):
    frame = _run("derivatives", tmp_path, "--methods", "exact-reverse,fd-batched,fd-fused")
    assert set(derivatives.REQUIRED) | set(METADATA_COLUMNS) | {"eps", "weights", "backend"} <= set(frame.columns)
    assert len(frame) == 3 * len(derivatives.QUICK.orders)
    ok = frame[frame.method != "fd-fused"]
    assert (ok.status == "ok").all(), ok.message.tolist()
    assert (ok.time_ms > 0).all() and (ok.peak_mem_mb >= 0).all() and (ok.rel_error < 1).all()
    # The benchmark suite's bounds (bench.experiments.derivatives.tolerance), where they mean something: exact
    # methods differ by float32 rounding; FD at T <= 2 is within a few percent. At T = 3 float32 FD is inherently
    # far off (see the eps-sweep), so it keeps only the loose bound above.
    assert (ok[ok.method == "exact-reverse"].rel_error < 1e-4).all(), ok
    assert (ok[(ok.method == "fd-batched") & (ok.order <= 2)].rel_error < 0.05).all(), ok
    fused = frame[frame.method == "fd-fused"]
    assert set(fused.status) <= {"ok", "unsupported", "error"}  # never a crash of the sweep
    interpreted = fused[fused.status == "ok"]  # on the CPU only under TRITON_INTERPRET=1, whose time it says it is
    assert (interpreted.backend == "triton-interpreter").all()
    assert interpreted.message.str.contains("its time is the interpreter's").all()
    assert (frame.weights == "random").all()
    # Each row but the baseline's was timed against fd-batched in pairs: its time over FD's, per round
    paired = ok[ok.method != "fd-batched"]
    assert (paired.versus == "fd-batched").all() and frame[frame.method == "fd-batched"].versus.isna().all()
    assert (paired.time_ratio > 0).all() and (paired.time_ratio_q1 <= paired.time_ratio).all()
    assert (paired.time_ratio <= paired.time_ratio_q3).all()
    assert (tmp_path / "figure2.png").stat().st_size > 10_000

    again = _run("derivatives", tmp_path, "--methods", "exact-reverse,fd-batched,fd-fused")
    pd.testing.assert_frame_equal(again, frame)  # every row was already done: nothing redone, nothing lost


def test_eps_sweep_quick_writes_the_csv_and_plot(tmp_path):
    frame = _run("eps-sweep", tmp_path)
    assert set(eps_sweep.REQUIRED) | set(METADATA_COLUMNS) <= set(frame.columns)
    quick = eps_sweep.QUICK
    assert len(frame) == len(quick.orders) * len(quick.dtypes) * len(quick.accuracies) * len(quick.grid())
    assert (frame.status == "ok").all(), frame.message.tolist()
    # float64 FD at T = 1 converges: the error falls as the step shrinks from 100 to 0.1 (truncation, slope 2)
    t1 = frame[(frame.order == 1) & (frame.dtype == "float64") & frame.eps.between(0.1, 100)].sort_values("eps")
    assert t1.rel_error.is_monotonic_increasing
    assert (tmp_path / "eps_sweep.png").stat().st_size > 10_000


def test_a_derivative_that_is_exactly_zero_gives_ok_rows_that_say_why_they_have_no_relative_error(tmp_path):
    """A Gaussian's log-density is quadratic: D^3 = 0 exactly, so no relative error exists; the rows are ok, exact
    and FD alike, say so, and the figures are drawn."""
    assert main(["derivatives", "--quick", "--device", "cpu", "--model", "gaussian", "--orders", "2,3", "--methods",
                 "fd-batched,exact-taylor,exact-reverse", "--out", str(tmp_path / "d")]) == 0
    assert main(["eps-sweep", "--quick", "--device", "cpu", "--model", "gaussian", "--orders", "3", "--dtypes",
                 "float64", "--out", str(tmp_path / "e")]) == 0
    for frame in (pd.read_csv(tmp_path / "d" / "derivatives.csv"), pd.read_csv(tmp_path / "e" / "eps_sweep.csv")):
        zero = frame[frame.order == 3]
        assert (frame.status == "ok").all() and len(zero), frame.message.tolist()
        assert zero.rel_error.isna().all() and zero.message.str.contains("exactly 0 at every sample").all()
        assert not zero.message.str.contains("wrong").any()  # no exact method is blamed
    assert (tmp_path / "d" / "figure2.png").exists() and (tmp_path / "e" / "eps_sweep.png").exists()


def test_a_rerun_measures_an_error_row_again_and_retry_names_what_else_to(tmp_path, capsys):
    argv = ["eps-sweep", "--quick", "--device", "cpu", "--orders", "1", "--dtypes", "float64", "--out", str(tmp_path)]
    assert main(argv) == 0
    path = tmp_path / "eps_sweep.csv"
    first = pd.read_csv(path)
    pd.read_csv(path).assign(status=["error", "timeout", *first.status[2:]]).to_csv(path, index=False)
    capsys.readouterr()
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"1 already in {path}" not in out and "(1 of them again: error; --retry error)" in out
    assert main(argv) == 0  # the error row measured again is ok; the timeout row is kept
    again = pd.read_csv(path)
    assert list(again.status[:2]) == ["ok", "timeout"] and len(again) == len(first)
    assert main([*argv, "--retry", "timeout"]) == 0 and (pd.read_csv(path).status == "ok").all()


def test_pytest_benchmark_rows_go_through_the_same_writer(tmp_path):
    json_path = tmp_path / "out.json"
    subprocess.run([sys.executable, "-m", "pytest", "bench/test_experiments.py", "-q", "-p", "no:cacheprovider",
                    "-k", "fd-batched and T1", f"--benchmark-json={json_path}"], cwd=REPO, check=True,
                   capture_output=True)
    log = CsvLog(tmp_path / "derivatives.csv", key_columns=CASE_KEYS, columns=derivatives.REQUIRED)
    log.extend(rows_from_pytest_benchmark(json_path))
    frame = pd.read_csv(log.path)
    assert set(derivatives.REQUIRED) | set(METADATA_COLUMNS) <= set(frame.columns)
    assert list(frame.method) == ["fd-batched"] and frame.time_ms[0] > 0 and frame.status[0] == "ok"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_one_line_usage_error(tmp_path, capsys):
    assert main(["derivatives", "--quick", "--device", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--device cpu" in err and "Traceback" not in err
    assert not (tmp_path / "derivatives.csv").exists()


def test_a_wrong_answer_in_the_benchmark_suite_fails_and_its_row_says_error_without_a_time(tmp_path, monkeypatch):
    import bench.experiments.derivatives as suite

    monkeypatch.setattr(suite, "EXACT_TOLERANCE", 0.0)  # float32 is never exactly the float64 reference
    monkeypatch.chdir(REPO)
    json_path = tmp_path / "out.json"
    assert pytest.main(["bench/test_experiments.py", "-q", "-p", "no:cacheprovider", "-k", "exact-reverse and T1",
                        f"--benchmark-json={json_path}"]) == pytest.ExitCode.TESTS_FAILED
    (row,) = rows_from_pytest_benchmark(json_path)
    assert row["status"] == "error" and "a wrong answer" in row["message"] and "time_ms" not in row


def test_a_usage_error_whose_message_holds_a_library_s_newline_is_still_one_line(monkeypatch, capsys):
    import bench.cli

    def refuse(args, default, quick=None):
        raise UsageError("--data x.csv: pandas says: Expected 12 fields in line 52, saw 14\n; expected a CSV")

    monkeypatch.setattr(bench.cli, "configure", refuse)
    assert main(["models"]) == 2
    assert capsys.readouterr().err == ("fdsm-bench models: error: --data x.csv: pandas says: Expected 12 fields in "
                                       "line 52, saw 14 ; expected a CSV\n")


def test_output_piped_into_a_reader_that_leaves_early_stops_quietly(tmp_path):
    run = subprocess.Popen([sys.executable, "-m", "bench", "eps-sweep", "--dry-run", "--out", str(tmp_path)],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run.stdout.close()  # `| head -0`: the plan's first line meets a closed pipe
    assert run.wait(timeout=120) == 141 and b"Traceback" not in run.stderr.read()  # 128 + SIGPIPE, as for a tool


def test_a_dry_run_checks_the_output_folder_without_making_it(tmp_path, capsys):
    file = tmp_path / "a-file"
    file.write_text("")
    assert main(["derivatives", "--quick", "--dry-run", "--orders", "1", "--out", str(file / "out")]) == 2
    assert f"--out {file / 'out'}: cannot write there ({file} is not a folder)" in capsys.readouterr().err
    assert main(["derivatives", "--quick", "--dry-run", "--orders", "1", "--out", str(tmp_path / "new" / "x")]) == 0
    assert not (tmp_path / "new").exists()


def test_a_shape_may_repeat_its_items_where_a_list_may_not(tmp_path):
    models = tmp_path / "square.py"  # a model that declares no event_shape: --event-shape gives it
    models.write_text("import torch\n\n\ndef square():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
                      "torch.nn.Linear(4, 1), torch.nn.Flatten(0))\n")
    assert main(["derivatives", "--quick", "--dry-run", "--model", f"{models}:square", "--event-shape", "2,2",
                 "--out", str(tmp_path)]) == 0


@pytest.mark.parametrize("argv, message", [
    (["fit", "--recipe", "nope"], "--recipe: unknown training recipe 'nope'"),
    (["derivatives", "--quick", "--methods", "bogus"], "--methods: unknown method 'bogus'"),
    (["derivatives", "--quick", "--accuracy", "3"], "not central-stencil accuracies"),
    (["eps-sweep", "--quick", "--accuracies", "2,0"], "not central-stencil accuracies"),
    (["derivatives", "--quick", "--threads", "0"], "expected a positive integer"),
    (["derivatives", "--quick", "--device", "bogus"], "--device bogus"),
    (["kernels", "--kernels", "bogus"], "--kernels bogus: unknown ['bogus']"),
    (["train-steps", "--models", "resnet"], "--models resnet: unknown ['resnet']"),
    (["all", "--skip", "bogus"], "--skip bogus: unknown ['bogus']"),
    (["eps-sweep", "--dtypes", "float8"], "--dtypes float8: unknown ['float8']; expected some of float32"),
    (["derivatives", "--quick", "--orders", "1,2,01"], "--orders 1,2,1: 1 given twice"),  # a sweep ran them twice
    (["kernels", "--quick", "--sizes-mb", "1,1.0"], "--sizes-mb 1.0,1.0: 1.0 given twice"),
    (["train", "--quick", "--ebm-objectives", "DSM,DSM"], "--ebm-objectives DSM,DSM: DSM given twice"),
    # each of these ran before: meta and mps wrote error rows, 1e-300 error rows of |v| = 0, p = 400 overflowed
    # after half a minute of sweeping
    (["derivatives", "--quick", "--device", "meta"], "--device meta: not a device the suite measures on"),
    (["derivatives", "--quick", "--device", "mps"], "expected auto, cpu or cuda[:N]"),
    (["derivatives", "--quick", "--device", "cpu:3"], "--device cpu:3: not a device the suite measures on"),
    (["eps-sweep", "--quick", "--eps-min", "1e-300", "--eps-max", "1e-299"],
     "--eps-min 1e-300: outside float32's normal range"),
    (["derivatives", "--quick", "--orders", "60"], "--orders 60: expected orders 1 to 12; [60] are higher"),
    (["derivatives", "--quick", "--accuracy", "400"], "expected even p from 2 to 16"),
    (["flops", "--times", __file__], f"--times {__file__}: not a CSV (ParserError"),  # this Python file
    (["derivatives", "--quick", "--out", ""], "argument --out: expected a folder path, got ''"),  # the cwd before
])
def test_a_bad_option_is_one_line_and_exit_status_2(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) if {"--threads", "--out"} & set(argv) else _no_exit() as stopped:
        code = main([*argv, *["--out", str(tmp_path)] * ("--out" not in argv)])
    err = capsys.readouterr().err
    assert (stopped.value.code if stopped else code) == 2  # argparse's own errors exit 2 too
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.csv"))


def test_channels_last_on_a_flat_model_says_its_rows_run_contiguous(tmp_path, capsys):
    """The option serves the image models of a mixed run, so a flat model is not refused; it was made contiguous
    without a word, where --n-chan on a model without one is refused."""
    assert main(["train-steps", "--quick", "--dry-run", "--models", "nice", "--memory-format", "channels_last",
                 "--out", str(tmp_path)]) == 0
    assert "nice's batches are flat (784,), with one layout; its rows run contiguous" in capsys.readouterr().err


class _no_exit:
    """A stand-in for ``pytest.raises`` where nothing is raised; ``as`` gives None."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_fit_keeps_a_checkpoint_only_if_it_was_trained_as_asked_and_quick_does_not_override_steps(tmp_path, capsys):
    args = ["fit", "--quick", "--device", "cpu", "--out", str(tmp_path)]
    assert main([*args, "--steps", "2"]) == 0
    note = (tmp_path / "checkpoints" / "deep-ebm-DSM.json").read_text()
    assert '"steps": 2' in note  # an explicit --steps wins over --quick's 3
    assert main([*args, "--steps", "2"]) == 0 and "with these settings, kept" in capsys.readouterr().out
    assert main([*args, "--steps", "4"]) == 2
    assert "trained with other settings (steps_asked 2 (asked: 4))" in capsys.readouterr().err
    checkpoint = tmp_path / "checkpoints" / "deep-ebm-DSM.pt"
    before = weights_label(checkpoint)
    assert main([*args, "--steps", "4", "--overwrite"]) == 0
    # rows are keyed by the weights' content: those measured on the replaced weights match no new case
    assert weights_label(checkpoint) != before


def test_fit_quick_gives_its_n_chan_only_to_a_model_that_has_one(tmp_path):
    assert main(["fit", "--quick", "--recipe", "dkef/SSM", "--steps", "1", "--device", "cpu", "--out",
                 str(tmp_path)]) == 0
    note = json.loads((tmp_path / "checkpoints" / "dkef-SSM.json").read_text())
    assert note["width"] is None and note["steps"] == 1


def test_fit_trains_in_the_dtype_asked_and_keeps_the_checkpoint_only_for_it(tmp_path, capsys):
    args = ["fit", "--quick", "--steps", "1", "--device", "cpu", "--out", str(tmp_path)]
    assert main([*args, "--dtype", "float64"]) == 0
    state = torch.load(tmp_path / "checkpoints" / "deep-ebm-DSM.pt", weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float64}
    capsys.readouterr()
    assert main(args) == 2
    assert "trained with other settings (dtype float64 (asked: float32))" in capsys.readouterr().err


def test_a_sweep_with_an_error_row_or_no_ok_row_exits_1(capsys):
    from bench.sweep import exit_status

    assert exit_status(pd.DataFrame({"status": ["ok", "timeout", "unsupported"]}), "derivatives") == 0
    assert exit_status(pd.DataFrame({"status": ["unsupported", "unsupported"]}), "kernels") == 0  # nothing to run
    assert exit_status(pd.DataFrame({"status": ["ok", "error"]}), "derivatives") == 1
    assert "derivatives: 1 of 2 rows are errors" in capsys.readouterr().out
    assert exit_status(pd.DataFrame({"status": ["unsupported", "timeout"]}), "derivatives") == 1
    assert "derivatives: no row ran ok (2 rows)" in capsys.readouterr().out


def test_the_eps_sweep_figure_draws_a_panel_whose_every_case_failed():
    rows = pd.DataFrame({"order": 1, "accuracy": 2, "dtype": "float32", "eps": [0.1, 1.0], "rel_error": float("nan"),
                         "status": "error", "message": "broken on purpose"})
    figure = eps_sweep.eps_sweep_figure(rows, "all failed")  # the y-limits came from the errors, NaN: a crash
    assert "not plotted (see the CSV):  error" in figure.texts[-1].get_text()  # said under the panels
    plt.close(figure)


def test_the_note_of_rows_not_plotted_names_a_method_once_with_its_orders():
    from bench.plots import failure_note

    rows = pd.DataFrame({"status": ["ok", "unsupported", "unsupported", "error"],
                         "method": ["fd-batched", "exact-reverse+compiled", "exact-reverse+compiled", "fd-fused"],
                         "order": [1, 1, 2, 3]})
    expected = "unsupported: exact-reverse+compiled (order 1, 2);  error: fd-fused (order 3)"
    assert failure_note(rows, ("method", "order")) == "not plotted (see the CSV):  " + expected
    assert failure_note(rows[:1], ("method", "order")) == ""


def test_train_steps_refuses_a_row_label_its_models_do_not_have(tmp_path, capsys):
    assert main(["train-steps", "--device", "cpu", "--models", "nice", "--objectives", "FD-SMM",
                 "--out", str(tmp_path)]) == 2
    assert "--objectives: ['FD-SMM'] is not a row of nice" in capsys.readouterr().err
