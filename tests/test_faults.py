"""The faults a new user hit, each refused before any work in one line (exit 2), or reported in one line:
bad option values, an unknown model, a stage of the main job that breaks, FD out of its dtype's range. The worker
and file faults are in tests/test_faults_workers.py and tests/test_faults_files.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.cli import main

EXAMPLE = f"{Path(__file__).resolve().parents[1] / 'examples' / 'user_model.py'}:make_model"


@pytest.mark.parametrize("argv, message", [
    (["derivatives", "--orders", "0"], "--orders 0: expected positive values"),
    (["derivatives", "--orders=-2,3"], "--orders -2,3: expected positive values, e.g. 1,2,3; [-2] are not"),
    (["derivatives", "--eps", "nan"], "--eps nan: expected a positive finite number"),
    (["derivatives", "--eps", "-1"], "--eps -1.0: expected a positive finite number"),
    (["derivatives", "--timeout", "inf"], "--timeout inf: expected a positive finite number"),
    (["derivatives", "--warmup", "-1"], "--warmup -1: expected an integer >= 0"),
    (["derivatives", "--model", "resnet"], "--model resnet: not a registered model; expected one of"),
    (["derivatives", "--batch", "0"], "argument --batch: expected a positive integer, got '0'"),
    (["derivatives", "--repeats", "0"], "--repeats 0: expected at least 1"),
    (["derivatives", "--dtype", "float8"], "--dtype float8: expected one of float32"),
    (["derivatives", "--steps-from", "no/such.csv"], "--steps-from no/such.csv: no such file"),
    (["derivatives", "--eps", "1e300"], "--eps 1e+300: outside float32's normal range (1.18e-38 to 3.4e+38)"),
    (["derivatives", "--eps", "1e-300"], "--eps 1e-300: outside float32's normal range"),
    (["derivatives", "--steps-from", "no/such.csv", "--eps", "auto"], "--steps-from no/such.csv with --eps auto: "
                                                                      "each sets the FD step; give one of them"),
    (["derivatives", "--checkpoint", "no/such.pt"], "--checkpoint no/such.pt: no such file"),
    (["eps-sweep", "--eps-min", "10", "--eps-max", "1"], "expected 0 < min < max"),
    (["kernels", "--sizes-mb", "0"], "--sizes-mb 0.0: expected positive values"),
    (["train-steps", "--lr", "nan"], "--lr nan: expected a positive finite number"),
    (["train-steps", "--lr", "0.05"], "--lr 0.05: a user model's learning rate (of Adam); nice declares its own"),
    (["fit", "--budget", "0"], "--budget 0.0: expected a positive finite number"),
    (["fit", "--samples", "8"], "--samples 8: fewer than the batch of deep-ebm/DSM"),
    (["train", "--dtype", "bfloat16"], "--dtype bfloat16: train runs in float32 or float64"),
    (["fit", "--dtype", "float16"], "--dtype float16: fit trains in float32 or float64"),
    (["fit", "--recipe", "nice/SSM", "--n-chan", "4"], "--n-chan 4: nice has no n_chan; its settings are dim"),
    (["fit", "--recipe", "nice/SSM", "--n-chan", "4", "--dry-run"], "--n-chan 4: nice has no n_chan"),
    (["fit", "--samples", "1", "--dry-run"], "--samples 1: fewer than the batch of deep-ebm/DSM"),
    (["fit", "--data", "wine-red", "--dry-run"], "--data wine-red: rows of shape (11,) do not fit the model's input "
                                                  "(1, 32, 32)"),
    (["fit", "--data", "mnist:" + "a" * 5000, "--dry-run"], "cannot look for the file (File name too long)"),
    (["train", "--dkef-objectives", "FOO", "--dry-run"], "--dkef-objectives FOO: unknown ['FOO']; expected some of "
                                                         "SSM, SSM-Taylor, SSMVR, FD-SSM"),
    (["train", "--ebm-objectives", "FOO"], "--ebm-objectives FOO: unknown ['FOO']; expected some of DSM"),
    (["train", "--dkef-objectives", "SSM,SSM", "--dry-run"], "--dkef-objectives SSM,SSM: SSM given twice"),
    (["train", "--repeats", "3", "--dry-run"], "--repeats 3: train has no use for it and takes no --repeats"),
    (["derivatives", "--seed", str(2**64)], "expected an integer that fits in 64 bits"),
    (["derivatives", "--compiled", "--eps", "auto"], "--compiled with --eps auto: the automatic step's probes"),
    (["derivatives", "--orders", "1,,2"], "got '1,,2', which has an empty item"),
    (["derivatives", "--methods="], "argument --methods: expected comma-separated values such as a,b, got ''"),
    (["derivatives", "--event-shape", "4"], "--event-shape 4: a user model's input shape; deep-ebm declares its own"),
    (["eps-sweep", "--model", EXAMPLE, "--size", "paper"], "--size paper: a setting of the registered models' "
                                                           "presets"),
    (["derivatives", "--model", EXAMPLE, "--n-chan", "4"], "--n-chan 4: a setting of the registered models' presets; "
                                                           "a user's model"),
    (["derivatives", "--model", "nice", "--n-chan", "4"], "--n-chan 4: nice has no n_chan; its settings are dim"),
    (["eps-sweep", "--model", "mlp-ebm", "--width", "4", "--quick"], "--n-chan 4: mlp-ebm has no n_chan"),
    (["models", "--csv", "/dev/null/x.csv"], "--csv /dev/null/x.csv: cannot write it"),
    (["models", "--csv", "/tmp"], "--csv /tmp: a folder where a results CSV belongs; choose another --csv"),
    (["models", "--csv", "/tmp", "--dry-run"], "--csv /tmp: a folder where a results CSV belongs"),
    (["models", "--csv", "/dev/null/x.csv", "--dry-run"], "--csv /dev/null: cannot write there"),
    (["train-steps", "--event-shape", "3"], "--event-shape 3: a user model's input shape; nice declares its own"),
    (["kernels", "--repeats", "3"], "--repeats 3: kernels has no use for it and takes no --repeats"),
    (["grad-agreement", "--repeats", "3"], "--repeats 3: grad-agreement has no use for it"),  # nothing is timed
    (["models", "--seed", "3"], "--seed 3: models has no use for it and takes no --seed"),
    (["eps-sweep", "--dtype", "float64"], "--dtype float64: eps-sweep has no use for it and takes no --dtype; did "
                                          "you mean --dtypes?"),  # not taken as a prefix of --dtypes
])
def test_a_bad_value_is_refused_in_one_line_before_any_case_runs(tmp_path, capsys, argv, message):
    try:
        code = main([*argv, "--quick", "--device", "cpu", "--out", str(tmp_path)])
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not list(tmp_path.rglob("*.csv")) and not list(tmp_path.rglob("*.pt"))  # nothing ran


def test_a_checkpoint_or_steps_file_that_is_not_one_is_refused_in_one_line(tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "text.pt").write_text("not a checkpoint")
    torch.save({"w": torch.ones(2)}, inputs / "other.pt")  # a state_dict, of another model
    (inputs / "other.csv").write_text("a,b\n1,2\n")
    (inputs / "binary.csv").write_bytes(bytes(range(256)))
    (inputs / "empty.csv").write_text("")
    for argv, message in [
        (["--checkpoint", str(inputs / "text.pt")], "not a state_dict that torch.load(weights_only=True) reads"),
        (["--checkpoint", str(inputs / "other.pt")], "expected a state_dict of 'deep-ebm' at size 'cpu'"),
        (["--steps-from", str(inputs / "other.csv")], "not an eps_sweep.csv of fdsm-bench eps-sweep: it has no "
                                                      "column status"),
        (["--steps-from", str(inputs / "binary.csv")], "binary.csv: not a text CSV"),
        (["--steps-from", str(inputs / "empty.csv")], "no ok fd-batched row of this function (deep-ebm, size cpu"),
    ]:
        out = tmp_path / "out"
        assert main(["derivatives", *argv, "--quick", "--device", "cpu", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"fdsm-bench derivatives: error: {argv[0]} " in err and message in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not out.exists() or not list(out.rglob("*.csv"))  # nothing ran


def test_a_stage_of_the_main_job_that_breaks_is_one_line_with_its_log(tmp_path, capsys, monkeypatch):
    import bench.main_job as job

    def broken(config, shared):
        raise RuntimeError("a bug in a stage\nwith a second line")

    real = job.stage_command
    monkeypatch.setattr(job, "stage_command", lambda stage: dataclasses.replace(real(stage), run=broken))
    assert main(["all", "--quick", "--device", "cpu", "--out", str(tmp_path), "--skip",
                 "eps-sweep,derivatives,train-steps,grad-agreement"]) == 1
    captured = capsys.readouterr()
    log = tmp_path / "logs" / "fit.log"
    assert f"=== fit: failed: RuntimeError: a bug in a stage (traceback in {log})" in captured.out
    assert "Traceback" not in captured.out + captured.err and "Traceback" in log.read_text()
    assert "failed: RuntimeError" in (tmp_path / "report.md").read_text()


def test_fd_in_bfloat16_says_it_is_out_of_range_and_stays_a_row_with_its_numbers(tmp_path):
    assert main(["derivatives", "--quick", "--device", "cpu", "--out", str(tmp_path), "--dtype", "bfloat16",
                 "--methods", "fd-batched", "--orders", "3"]) == 0
    (row,) = pd.read_csv(tmp_path / "derivatives.csv").to_dict("records")
    unit = torch.finfo(torch.bfloat16).eps
    assert row["status"] == "ok" and row["time_ms"] > 0 and row["rel_error"] > 0.01
    assert row["message"].startswith(f"FD in bfloat16 is numerically out of range here: its roundoff, about "
                                     f"u / eps^T with u = {unit:.1e}")


def test_a_fit_whose_loss_diverges_says_so_in_one_line_and_saves_nothing(tmp_path, capsys):
    assert main(["fit", "--quick", "--device", "cpu", "--out", str(tmp_path), "--lr", "1e30", "--steps", "5"]) == 1
    err = capsys.readouterr().err
    assert "fdsm-bench fit: failed: training step 2: the loss is nan, not finite" in err and "lower the learning" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not list(tmp_path.rglob("*.pt"))
